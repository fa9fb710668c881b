"""``pom-deploy doctor``: what is installed and found here, and so what runs where: onnxruntime
and its providers, TensorRT, CUDA and GPUs, Triton's server, pom-deploy's native libraries (where,
built for what, usable or why not) and, for an ONNX file, whether its fused nodes run on the CPU
kernel or on their function bodies. ``--json`` for scripts.

Each ``probe_*`` function returns one section as a plain dict; the tests replace them to show the
report on machines this one is not (a GPU, TensorRT, a built library).
"""

from __future__ import annotations

import importlib.util
import json
import platform
import re
import shutil
import subprocess
from pathlib import Path

from rich.console import Console

from ..errors import PomDeployError, first_line
from ..ops.native_build import find_nvcc
from ..ops.native_libraries import BUILD_OPS_COMMAND, onnxruntime_api_version, onnxruntime_problem, read_build_info, tensorrt_problem
from ..ops.ort_ops import find_ort_ops_library
from ..tensorrt.plugins import find_plugin_library
from ..version import __version__


def register(commands) -> None:
    doctor = commands.add_parser("doctor", help="what is installed and found here, and what will run where",
                                 description="Report onnxruntime and its providers, TensorRT, CUDA and GPUs, Triton's "
                                             "server, pom-deploy's native libraries and, for MODEL, whether its fused "
                                             "PolyAggregate nodes run on the CPU kernel or on their function bodies.")
    doctor.add_argument("model", type=Path, nargs="?", help="an ONNX file to check (optional)")
    doctor.add_argument("--json", action="store_true", help="print as JSON")
    doctor.set_defaults(func=doctor_command)


def probe_onnxruntime() -> dict:
    import onnxruntime as ort

    return {"version": ort.__version__, "c_api": onnxruntime_api_version(ort.__version__),
            "providers": ort.get_available_providers()}


def probe_tensorrt() -> dict:
    spec = importlib.util.find_spec("tensorrt")
    if spec is None:
        return {"version": None, "where": None}
    try:
        import tensorrt as trt
    except Exception as exc:  # installed but its libraries fail to load
        return {"version": None, "where": spec.origin, "problem": first_line(exc)}
    return {"version": trt.__version__, "where": str(Path(trt.__file__).parent)}


def probe_cuda() -> dict:
    nvcc = find_nvcc()
    version = None
    if nvcc:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
        found = re.search(r"release (\d+\.\d+)", out)
        version = found.group(1) if found else None
    gpus = []
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name,compute_cap,driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        for line in out.splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) == 3:
                gpus.append({"name": parts[0], "compute_capability": parts[1], "driver": parts[2]})
    return {"nvcc": nvcc, "nvcc_version": version, "gpus": gpus}


def probe_triton() -> dict:
    serve_extra = importlib.util.find_spec("tritonclient") is not None and importlib.util.find_spec("pytriton") is not None
    server = None
    if serve_extra:
        from ..serving.server import find_bundled_server

        try:
            server = str(find_bundled_server().binary)
        except PomDeployError:
            server = None
    return {"serve_extra": serve_extra, "tritonserver": server or shutil.which("tritonserver")}


def _library(finder, problem_for, installed: str | None) -> dict:
    try:
        path = finder()
    except PomDeployError as exc:
        return {"path": None, "built_for": None, "problem": str(exc)}
    if path is None:
        return {"path": None, "built_for": None, "problem": f"not found: build it with {BUILD_OPS_COMMAND}"}
    problem = problem_for(path, installed) if installed else None
    return {"path": str(path), "built_for": read_build_info(path), "problem": problem}


def probe_libraries(onnxruntime: dict, tensorrt: dict) -> dict:
    return {"onnxruntime_op": _library(find_ort_ops_library, onnxruntime_problem, onnxruntime["version"]),
            "cuda_plugin": _library(find_plugin_library, tensorrt_problem, tensorrt.get("version"))}


def model_verdict(path: Path, onnxruntime: dict, libraries: dict) -> dict:
    """Where ``path``'s PolyAggregate nodes run when opened with the default providers."""
    import onnx

    from ..onnx_graph import read_spec
    from ..runtime.providers import select_providers
    from ..tensorrt.plugins import fused_nodes

    try:
        nodes = fused_nodes(onnx.load(str(path), load_external_data=False))
        spec = read_spec(path)
    except Exception as exc:
        raise PomDeployError(f"{path}: not a readable ONNX file ({first_line(exc)})") from None
    first = select_providers(None, onnxruntime["providers"])[0]
    op, plugin = libraries["onnxruntime_op"], libraries["cuda_plugin"]
    verdict = {"path": str(path), "fused_nodes": nodes, "provider": first}
    if nodes == 0 or spec is None or not spec.fused_ops:
        return {**verdict, "runs_on": "no fused nodes", "why": "exported without --fused-ops: plain ONNX ops everywhere"}
    if first == "CPUExecutionProvider":
        if op["path"] and not op["problem"]:
            return {**verdict, "runs_on": "kernel", "why": f"CPU op library {op['path']}"}
        return {**verdict, "runs_on": "function bodies", "why": f"CPU op library {op['problem']}"}
    if first == "TensorrtExecutionProvider" and plugin["path"] and not plugin["problem"]:
        return {**verdict, "runs_on": "plugin", "why": f"TensorRT plugin ({plugin['path']}), through onnxruntime's TensorRT EP"}
    return {**verdict, "runs_on": "function bodies",
            "why": f"{first} runs the decomposed ops; the CPU kernel needs the CPU provider first (--device cpu)"}


def gather(model: Path | None = None) -> dict:
    onnxruntime, tensorrt = probe_onnxruntime(), probe_tensorrt()
    libraries = probe_libraries(onnxruntime, tensorrt)
    report = {"pom_deploy": __version__, "python": platform.python_version(), "machine": platform.machine(),
              "onnxruntime": onnxruntime, "tensorrt": tensorrt, "cuda": probe_cuda(), "triton": probe_triton(),
              "libraries": libraries}
    if model is not None:
        report["model"] = model_verdict(model, onnxruntime, libraries)
    return report


def _library_line(name: str, entry: dict) -> str:
    if entry["path"] is None:
        return f"{name}: {entry['problem']}"
    built = ", ".join(f"{k} {v}" for k, v in (entry["built_for"] or {}).items()) or "no build record"
    state = f"[red]not usable: {entry['problem']}[/]" if entry["problem"] else "[green]usable[/]"
    return f"{name}: {entry['path']} (built for {built}): {state}"


def doctor_command(args) -> int:
    report = gather(args.model)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    console = Console(soft_wrap=True)  # paths stay whole, on one line each
    ort_, trt, cuda, triton = report["onnxruntime"], report["tensorrt"], report["cuda"], report["triton"]
    console.print(f"[bold]pom-deploy {report['pom_deploy']}[/] (Python {report['python']}, {report['machine']})")
    console.print(f"onnxruntime {ort_['version']} (C API {ort_['c_api']}): {', '.join(ort_['providers'])}")
    console.print(f"TensorRT: {trt['version']} at {trt['where']}" if trt["version"]
                  else f"TensorRT: not installed{' (' + trt['problem'] + ')' if trt.get('problem') else ''}")
    gpus = ", ".join(f"{g['name']} (sm_{g['compute_capability'].replace('.', '')})" for g in cuda["gpus"]) or "none found"
    nvcc = f"nvcc {cuda['nvcc_version']} at {cuda['nvcc']}" if cuda["nvcc"] else "no nvcc"
    console.print(f"CUDA: {nvcc}; GPUs: {gpus}")
    console.print(f"Triton: {'serve extra installed' if triton['serve_extra'] else 'serve extra not installed'}; "
                  f"tritonserver: {triton['tritonserver'] or 'not found'}")
    console.print(_library_line("PolyAggregate CPU op (onnxruntime)", report["libraries"]["onnxruntime_op"]))
    console.print(_library_line("CUDA kernels / TensorRT plugin", report["libraries"]["cuda_plugin"]))
    if "model" in report:
        m = report["model"]
        console.print(f"{m['path']}: {m['fused_nodes']} PolyAggregate node(s), first provider {m['provider']}: "
                      f"[bold]{m['runs_on']}[/] ({m['why']})")
    return 0
