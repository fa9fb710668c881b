"""Where pom-deploy's native libraries are looked for, and what each was built for: one rule for
both, the onnxruntime custom-op library (``ort_ops``) and the CUDA/TensorRT plugin library
(``pom_deploy.tensorrt.plugins``).

The search, first match wins: the library's environment variable (files or folders,
``os.pathsep``-separated; ``none`` turns the search off), the user folder ``pom-deploy build-ops``
writes to by default (it survives reinstalling the package), ``pom_deploy/lib/`` (where a wheel
carries them), and, in a source checkout, ``build/plugins/`` (plugins/CMakeLists.txt's documented
build folder). A path that is named explicitly, by argument or in the variable, and does not
exist is an error, not skipped: a typo would otherwise run without the library, or with another
build of it.

Each library carries one line of what it was built for (plugins/poly_aggregate/polyAggregateBuildInfo.cpp),
read here from the file itself, so that a library is checked before it is loaded into the process.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import PomDeployError

SEARCH_OFF = "none"  # $POM_DEPLOY_ORT_OPS=none, $POM_DEPLOY_PLUGIN=none: never look for the library
USER_LIBRARY_DIR_ENV = "POM_DEPLOY_LIB_DIR"
BUILD_OPS_COMMAND = "pom-deploy build-ops"
_BUILD_INFO = re.compile(rb"pom_deploy_build_info=1((?:;[a-z_]+=[0-9.]+)*)")


def user_library_dir() -> Path:
    """The folder ``pom-deploy build-ops`` writes to by default: ``$POM_DEPLOY_LIB_DIR``, else
    ``$XDG_DATA_HOME/pom-deploy/lib`` (``~/.local/share/pom-deploy/lib``). Outside the installed
    package, so a ``pip install --upgrade`` keeps what was built for this machine."""
    if os.environ.get(USER_LIBRARY_DIR_ENV):
        return Path(os.environ[USER_LIBRARY_DIR_ENV])
    data_home = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data_home) / "pom-deploy" / "lib"


def package_library_dir() -> Path:
    """``pom_deploy/lib/``: where a wheel built with the libraries carries them."""
    return Path(__file__).resolve().parent.parent / "lib"


def search_folders() -> list[Path]:
    """The folders searched after the environment variable, in order."""
    checkout = Path(__file__).resolve().parents[2]
    return [user_library_dir(), package_library_dir(), checkout / "build" / "plugins"]


def search_off(env: str) -> bool:
    """Whether the user turned the search off (``$env`` is ``none``): they chose to run without it."""
    return os.environ.get(env, "").strip().lower() == SEARCH_OFF


def find_library(explicit: str | Path | None, env: str, patterns: tuple[str, ...], what: str,
                 error: type[PomDeployError]) -> Path | None:
    """The library ``explicit`` (must exist), else the first one on the search path (see the
    module docstring) whose name matches one of ``patterns``, else None. ``error``: the class of
    the one-line error for a named path that does not exist."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise error(f"{what} {path} not found")
        return path
    if search_off(env):
        return None
    setting = os.environ.get(env, "")
    named = [Path(p) for p in setting.split(os.pathsep) if p]
    missing = [str(p) for p in named if not p.exists()]
    if missing:
        raise error(f"${env} names {', '.join(missing)}, which does not exist "
                    f"(set it to the {what}, its folder, or {SEARCH_OFF!r})")
    for place in [*named, *search_folders()]:
        if place.is_file():
            return place
        if place.is_dir():
            for pattern in patterns:
                found = sorted(place.glob(pattern))
                if found:
                    return found[0]
    return None


def read_build_info(path: str | Path) -> dict[str, str] | None:
    """What the library at ``path`` was built for, e.g. ``{"onnxruntime_api": "29"}`` or
    ``{"tensorrt": "10.3.0"}``; None when the file carries no record (not built from this tree)."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    match = _BUILD_INFO.search(data)
    if match is None:
        return None
    return dict(part.split("=", 1) for part in match.group(1).decode().split(";") if part)


def onnxruntime_api_version(version: str) -> int:
    """The C API version an onnxruntime release offers: its minor number (1.32.x offers API 32,
    the ``ORT_API_VERSION`` of its header; onnxruntime keeps the C API append-only)."""
    return int(version.split(".")[1])


def onnxruntime_problem(path: str | Path, installed: str) -> str | None:
    """Why the custom-op library at ``path`` must not be loaded into onnxruntime ``installed``, or
    None. A library built against a newer header than the installed onnxruntime may use what that
    onnxruntime lacks; an older header is fine (onnxruntime keeps older C API versions)."""
    built = (read_build_info(path) or {}).get("onnxruntime_api")
    if built is None:
        return f"{path} records no onnxruntime C API version (not built by {BUILD_OPS_COMMAND}); rebuild it with {BUILD_OPS_COMMAND}"
    offered = onnxruntime_api_version(installed)
    if int(built) > offered:
        return (f"{path} was built for onnxruntime's C API {built} (onnxruntime 1.{built}), newer than this onnxruntime "
                f"{installed} (C API {offered}): rebuild it with {BUILD_OPS_COMMAND}, or upgrade onnxruntime")
    return None


def tensorrt_problem(path: str | Path, installed: str) -> str | None:
    """Why the plugin library at ``path`` must not be loaded into TensorRT ``installed``, or None.
    TensorRT keeps its plugin interfaces within a major version, not across them."""
    built = (read_build_info(path) or {}).get("tensorrt")
    if built is None:
        return (f"{path} records no TensorRT version (built without TensorRT's headers, or not by {BUILD_OPS_COMMAND}): "
                f"rebuild it with {BUILD_OPS_COMMAND} where TensorRT's headers are")
    if built.split(".")[0] != installed.split(".")[0]:
        return (f"{path} was built for TensorRT {built}, this TensorRT is {installed}: rebuild it with {BUILD_OPS_COMMAND}")
    return None
