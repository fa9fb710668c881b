"""The JSON written next to every engine (``model.engine.json``).

An engine is only valid for the TensorRT version and GPU it was built with, and carries no
pom-deploy metadata; the sidecar records both, so that loading can fail with a clear message
instead of a deserialization crash, and so that a runtime session (streaming included) gets
the same ``GraphSpec`` as from the ONNX file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..version import __version__
from ..errors import ModelLoadError
from ..outputs import atomic_output
from ..spec import GraphSpec
from .environment import version_tuple

SIDECAR_FORMAT = "pom-deploy-engine"
SIDECAR_FORMAT_VERSION = 1


class EngineMismatchError(ModelLoadError):
    """An engine was built for another TensorRT version or another GPU than this machine's."""


def sidecar_path(engine_path: str | Path) -> Path:
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def make_sidecar(*, environment: dict[str, str], precision: str, strongly_typed: bool, profiles: list[dict],
                 spec: GraphSpec | None, source_onnx: dict[str, Any], plugin: dict[str, Any],
                 options: dict[str, Any]) -> dict[str, Any]:
    """The sidecar dict (``environment`` as given by ``current_environment()``)."""
    return {
        "format": SIDECAR_FORMAT,
        "format_version": SIDECAR_FORMAT_VERSION,
        "pom_deploy_version": __version__,
        "tensorrt_version": environment["tensorrt_version"],
        "gpu_name": environment["gpu_name"],
        "compute_capability": environment["compute_capability"],
        "precision": precision,
        "strongly_typed": strongly_typed,
        "profiles": profiles,
        "plugin": plugin,
        "options": options,
        "source_onnx": source_onnx,
        "onnx_metadata": json.loads(spec.to_json()) if spec is not None else None,
    }


def write_json_atomic(path: str | Path, data: Any) -> None:
    with atomic_output(Path(path)) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_sidecar(engine_path: str | Path) -> dict[str, Any] | None:
    """The sidecar of an engine, None when there is none; ModelLoadError when it is unreadable."""
    path = sidecar_path(engine_path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: unreadable engine sidecar ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise ModelLoadError(f"{path}: not a pom-deploy engine sidecar")
    if data.get("format_version", 0) > SIDECAR_FORMAT_VERSION:
        raise ModelLoadError(f"{path}: sidecar format {data['format_version']} is newer than this pom-deploy understands; "
                             "upgrade pom-deploy")
    return data


def spec_from_sidecar(data: dict[str, Any] | None) -> GraphSpec | None:
    if not data or not data.get("onnx_metadata"):
        return None
    return GraphSpec.from_json(json.dumps(data["onnx_metadata"]))


def compatibility_problems(sidecar: dict[str, Any], environment: dict[str, str]) -> list[str]:
    """Why an engine with this sidecar cannot run in ``environment``; empty when it can.

    TensorRT: the same version, unless built ``version_compatible`` (then any later version
    of the same major). GPU: the same compute capability, unless built with a hardware
    compatibility level (``ampere+``: any sm_80 or newer; ``same-cc``: same capability).
    """
    problems = []
    options = sidecar.get("options") or {}
    built, here = sidecar.get("tensorrt_version", "?"), environment["tensorrt_version"]
    vb, vh = version_tuple(built), version_tuple(here)
    if options.get("version_compatible"):
        if not vb or not vh or vb[0] != vh[0] or vh < vb:
            problems.append(f"TensorRT {built} (version-compatible: runs on {vb[0] if vb else '?'}.x from {built} on), "
                            f"this machine has {here}")
    elif vb[:3] != vh[:3]:
        problems.append(f"TensorRT {built}, this machine has {here}")
    cc_built, cc_here = sidecar.get("compute_capability", "?"), environment["compute_capability"]
    level = options.get("hardware_compatibility")
    if level == "ampere+":
        if version_tuple(cc_here) < (8, 0):
            problems.append(f"GPUs of compute capability 8.0 or newer (ampere+), this GPU ({environment['gpu_name']}) is {cc_here}")
    elif cc_built != cc_here:
        problems.append(f"{sidecar.get('gpu_name', '?')} (compute capability {cc_built}), "
                        f"this GPU ({environment['gpu_name']}) is {cc_here}")
    return problems


def check_compatible(engine_path: str | Path, sidecar: dict[str, Any], environment: dict[str, str]) -> None:
    """Raise EngineMismatchError, one line with the fix, when the engine cannot run here."""
    problems = compatibility_problems(sidecar, environment)
    if problems:
        source = (sidecar.get("source_onnx") or {}).get("path") or "model.onnx"
        raise EngineMismatchError(
            f"{engine_path} was built for {'; and for '.join(problems)}; engines are not portable: rebuild it on this machine "
            f"with `pom-deploy build-engine {source} -o {engine_path} --force`"
        )
