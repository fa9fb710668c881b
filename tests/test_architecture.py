"""The house rules of the package, read off its source: data flows one way through the layers
below (load -> convert -> export -> verify -> build -> run, with the shared base first), so no
module imports one of a higher layer; and no module grows past MAX_LINES."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pom_deploy"
MAX_LINES = 400

# Bottom up. A module belongs to the layer of its longest listed prefix; it may import its own
# layer and the layers before it. The facade (pom_deploy/__init__.py) sits above them all.
LAYERS = (
    ("base", ("pom_deploy.version", "pom_deploy.errors", "pom_deploy.digests", "pom_deploy.dtypes", "pom_deploy.tolerances",
              "pom_deploy.spec", "pom_deploy.outputs", "pom_deploy.comparator", "pom_deploy.onnx_graph")),
    ("models", ("pom_deploy.models",)),
    ("ops", ("pom_deploy.ops",)),
    ("loading", ("pom_deploy.architectures", "pom_deploy.loading", "pom_deploy.pt2_members", "pom_deploy.streaming")),
    ("exporters", ("pom_deploy.exporters",)),
    ("runtime", ("pom_deploy.runtime",)),
    ("tensorrt", ("pom_deploy.tensorrt",)),
    ("serving", ("pom_deploy.serving",)),  # Triton serving, above the backends it serves
    ("cli", ("pom_deploy.cli",)),
)
FACADE = "pom_deploy"


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


MODULES = _modules()


def _layer(module: str) -> int:
    if module == FACADE:
        return len(LAYERS)
    matches = [(len(prefix), index) for index, (_, prefixes) in enumerate(LAYERS) for prefix in prefixes
               if module == prefix or module.startswith(prefix + ".")]
    assert matches, f"{module} is in no layer: add it to LAYERS in {Path(__file__).name}"
    return max(matches)[1]


def _imports(module: str, path: Path) -> set[str]:
    """The package modules ``module`` imports, anywhere in its body (function-level too)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:  # ``from . import x``: x may be a module
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {name for name in found if name == FACADE or name.startswith(FACADE + ".")}


def test_every_module_is_in_a_layer():
    for module in MODULES:
        _layer(module)


def test_no_module_imports_a_higher_layer():
    upward = [
        f"{module} ({LAYERS[_layer(module)][0]}) imports {target} ({'facade' if target == FACADE else LAYERS[_layer(target)][0]})"
        for module, path in MODULES.items() if module != FACADE
        for target in sorted(_imports(module, path)) if _layer(target) > _layer(module)
    ]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_no_module_is_over_the_line_limit():
    long = {module: n for module, path in MODULES.items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_the_checker_sees_an_upward_import(tmp_path):
    """The guard itself: a models module importing the exporters is caught."""
    source = tmp_path / "layers.py"
    source.write_text("from ..exporters import export_onnx\nfrom . import functional\n")
    imports = _imports("pom_deploy.models.layers", source)
    assert imports == {"pom_deploy.exporters", "pom_deploy.models.functional"}
    assert _layer("pom_deploy.exporters") > _layer("pom_deploy.models.layers")
