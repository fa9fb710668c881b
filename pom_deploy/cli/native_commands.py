"""``pom-deploy build-ops``: build the native libraries this machine can use (the CPU kernel's
onnxruntime op; the CUDA kernels and the TensorRT plugin) into a folder the runtime searches."""

from __future__ import annotations

import sys
from pathlib import Path

from ..ops.native_build import CUDA_LIBRARY, ORT_LIBRARY, plan_build, run_build
from ..ops.native_libraries import package_library_dir, user_library_dir
from ..ops.ort_ops import ORT_OPS_ENV
from ..tensorrt.plugins import PLUGIN_ENV
from .common import stderr_console


def register(commands) -> None:
    build = commands.add_parser(
        "build-ops", help="build the PolyAggregate CPU op for onnxruntime (and the CUDA kernels/TensorRT plugin) for this machine",
        description="Build pom-deploy's native libraries for this machine: the CPU kernel's onnxruntime op when a C++ "
                    "compiler and onnxruntime's C API header are there; the CUDA kernels and the TensorRT plugin when nvcc "
                    "(and TensorRT's headers) are there. The runtime then finds them (pom-deploy doctor shows where).")
    build.add_argument("--onnxruntime-include", type=Path, metavar="DIR",
                       help="folder with onnxruntime_c_api.h (default: $ONNXRUNTIME_INCLUDE_DIR, else $ONNXRUNTIME_ROOT)")
    build.add_argument("--arch", help="CUDA architectures, e.g. 87 or '86;90' or native (default: the local GPUs')")
    build.add_argument("--tensorrt-include", type=Path, metavar="DIR",
                       help="folder with NvInferRuntime.h (default: $TENSORRT_INCLUDE_DIR, $TensorRT_ROOT, system folders)")
    build.add_argument("--no-onnxruntime", dest="onnxruntime", action="store_false", help="skip the onnxruntime op")
    build.add_argument("--no-cuda", dest="cuda", action="store_false", help="skip the CUDA kernels and the TensorRT plugin")
    where = build.add_mutually_exclusive_group()
    where.add_argument("--output", type=Path, metavar="DIR",
                       help=f"where to put the libraries (default: the user folder, {user_library_dir()}, which "
                            "survives reinstalling pom-deploy; $POM_DEPLOY_LIB_DIR changes it)")
    where.add_argument("--into-package", action="store_true",
                       help=f"put them next to the package ({package_library_dir()}), e.g. before python -m build --wheel")
    build.add_argument("--jobs", type=int, help="parallel compile jobs (default: all CPUs)")
    build.add_argument("--verbose", action="store_true", help="show CMake's output")
    build.set_defaults(func=build_ops_command)


def build_ops_command(args) -> int:
    output = package_library_dir() if args.into_package else (args.output or user_library_dir())
    plan = plan_build(output, onnxruntime_include=args.onnxruntime_include, onnxruntime=args.onnxruntime,
                      cuda=args.cuda, arch=args.arch, tensorrt_include=args.tensorrt_include)
    console = stderr_console()
    for reason in plan.skipped:
        console.print(f"skipped {reason}")
    console.print(f"building {', '.join(plan.libraries)} into {plan.output} ...")
    built = run_build(plan, args.jobs, log=sys.stderr if args.verbose else None)
    for path, record in built.items():
        what = ", ".join(f"{k} {v}" for k, v in record.items()) or "no build record"
        print(f"built {path} (for {what})")
    if args.output:  # a folder of the user's choosing is searched only when named
        variables = {ORT_LIBRARY: ORT_OPS_ENV, CUDA_LIBRARY: PLUGIN_ENV}
        names = " ".join(f"{variables[Path(p).name]}={plan.output}" for p in built)
        print(f"the runtime looks there when told: {names}")
    return 0
