"""The two things pyproject.toml cannot say: the wheel carries the native sources, so that
``pom-deploy build-ops`` works from an installed package (plugins/ -> pom_deploy/plugins_source/),
and a wheel holding libraries built with ``pom-deploy build-ops --into-package`` (pom_deploy/lib/*.so)
is tagged for this platform instead of as pure Python."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

ROOT = Path(__file__).resolve().parent
NATIVE_SOURCES = ("CMakeLists.txt", "poly_aggregate")  # what build-ops compiles (plugins/tests is not shipped)


class BuildWithNativeSources(build_py):
    def run(self):
        super().run()
        target = Path(self.build_lib) / "pom_deploy" / "plugins_source"
        for name in NATIVE_SOURCES:
            source = ROOT / "plugins" / name
            for path in [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file()):
                destination = target / path.relative_to(ROOT / "plugins")
                destination.parent.mkdir(parents=True, exist_ok=True)
                self.copy_file(str(path), str(destination), preserve_mode=False)


class NativeLibrariesDistribution(Distribution):
    def has_ext_modules(self):
        return any((ROOT / "pom_deploy" / "lib").glob("*.so"))


setup(cmdclass={"build_py": BuildWithNativeSources}, distclass=NativeLibrariesDistribution)
