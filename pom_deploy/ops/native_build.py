"""Building the native libraries for this machine (``pom-deploy build-ops``): what is there to
build with, and one run of plugins/CMakeLists.txt into a folder the runtime searches
(``pom_deploy.ops.native_libraries``).

- The onnxruntime op (CPU kernel) needs a C++ compiler, CMake and onnxruntime's C API header,
  which no onnxruntime wheel ships: ``--onnxruntime-include``, ``$ONNXRUNTIME_INCLUDE_DIR`` or
  ``$ONNXRUNTIME_ROOT``. It is not downloaded: that would need the checksum of onnxruntime's
  release archive pinned here, and none could be verified where this was written
  (docs/native.md), so without a header the build stops and says which of these to give.
- The CUDA kernels and the TensorRT plugin need nvcc (and TensorRT's headers for the plugin;
  Jetson's are under /usr/include/aarch64-linux-gnu), for the local GPU's architectures unless
  ``arch`` is given.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import PomDeployError
from .native_libraries import onnxruntime_api_version, read_build_info


ORT_LIBRARY = "libpom_deploy_ort_ops.so"
CUDA_LIBRARY = "libpom_deploy_plugins.so"
# Built beside the plugin when TensorRT's headers are found: registers its creator when loaded by a
# plain dlopen (Triton's plugins= list, ctypes, Polygraphy --plugins), for loaders without load_library.
AUTOREGISTER_LIBRARY = "libpom_deploy_plugins_autoregister.so"
ORT_HEADER = "onnxruntime_c_api.h"
ORT_MIN_API = 17  # polyAggregateOrtOp.cpp's kOrtApiVersion: KernelContext_ParallelFor
HEADER_SUFFIXES = ("", "include", "include/onnxruntime", "include/onnxruntime/core/session")
TENSORRT_HEADER_PLACES = ("/usr/include/x86_64-linux-gnu", "/usr/include/aarch64-linux-gnu", "/usr/include",
                          "/usr/local/TensorRT/include")  # Debian/Ubuntu packages, Jetson (JetPack), tar install
NVCC_PLACES = ("/usr/local/cuda/bin/nvcc",)  # CUDA's default prefix, also JetPack's


class NativeBuildError(PomDeployError):
    """A native library cannot be built here: what is missing, and what to give."""


def plugins_source() -> Path:
    """plugins/ of a source checkout, else the copy a wheel carries (setup.py puts it there)."""
    checkout = Path(__file__).resolve().parents[2] / "plugins"
    return checkout if (checkout / "CMakeLists.txt").is_file() else Path(__file__).resolve().parents[1] / "plugins_source"


def no_header_message(onnxruntime_version: str) -> str:
    return (f"onnxruntime's C API header ({ORT_HEADER}) is needed to build the CPU op: pass --onnxruntime-include DIR, "
            f"or set ONNXRUNTIME_INCLUDE_DIR (the folder with the header) or ONNXRUNTIME_ROOT (an unpacked "
            f"onnxruntime-linux-*-{onnxruntime_version} release archive); or --no-onnxruntime to build the CUDA parts only")


def find_onnxruntime_header(explicit: str | Path | None, onnxruntime_version: str) -> Path:
    """The folder holding onnxruntime_c_api.h: ``explicit``, else $ONNXRUNTIME_INCLUDE_DIR, else
    $ONNXRUNTIME_ROOT (and its include folders). A folder given that lacks it is an error; its
    ``ORT_API_VERSION`` must be at least the op's and at most the installed onnxruntime's."""
    given = [(str(explicit), "--onnxruntime-include")] if explicit else []
    given += [(os.environ[v], f"${v}") for v in ("ONNXRUNTIME_INCLUDE_DIR", "ONNXRUNTIME_ROOT") if os.environ.get(v)]
    if not given:
        raise NativeBuildError(no_header_message(onnxruntime_version))
    folder, source = given[0]
    found = next((Path(folder) / s for s in HEADER_SUFFIXES if (Path(folder) / s / ORT_HEADER).is_file()), None)
    if found is None:
        raise NativeBuildError(f"{source} is {folder}, which holds no {ORT_HEADER} (nor its include/ folders)")
    api = header_api_version(found / ORT_HEADER)
    offered = onnxruntime_api_version(onnxruntime_version)
    if api is None or not ORT_MIN_API <= api <= offered:
        raise NativeBuildError(f"{found / ORT_HEADER} declares ORT_API_VERSION {api}; the op needs {ORT_MIN_API} to "
                               f"{offered} (onnxruntime 1.{ORT_MIN_API} to the installed {onnxruntime_version}): "
                               f"give the header of onnxruntime {onnxruntime_version}")
    return found


def header_api_version(header: Path) -> int | None:
    match = re.search(r"^#define ORT_API_VERSION (\d+)", header.read_text(errors="replace"), re.MULTILINE)
    return int(match.group(1)) if match else None


def find_cxx_compiler() -> str | None:
    """$CXX, else c++, g++ or clang++ on PATH."""
    candidates = [os.environ["CXX"]] if os.environ.get("CXX") else ["c++", "g++", "clang++"]
    return next((shutil.which(c) for c in candidates if shutil.which(c)), None)


def find_nvcc() -> str | None:
    """$CUDACXX, else nvcc on PATH, else CUDA's default prefix (where JetPack puts it, off PATH)."""
    if os.environ.get("CUDACXX"):
        return shutil.which(os.environ["CUDACXX"])
    return shutil.which("nvcc") or next((p for p in NVCC_PLACES if os.access(p, os.X_OK)), None)


def find_tensorrt_headers(explicit: str | Path | None = None) -> Path | None:
    """The folder with NvInferRuntime.h: ``explicit`` (must hold it), $TENSORRT_INCLUDE_DIR,
    $TensorRT_ROOT/include, then the system's (Jetson's included)."""
    if explicit:
        if not (Path(explicit) / "NvInferRuntime.h").is_file():
            raise NativeBuildError(f"--tensorrt-include {explicit} holds no NvInferRuntime.h")
        return Path(explicit)
    places = [os.environ.get("TENSORRT_INCLUDE_DIR")]
    if os.environ.get("TensorRT_ROOT"):
        places.append(str(Path(os.environ["TensorRT_ROOT"]) / "include"))
    return next((Path(p) for p in [*places, *TENSORRT_HEADER_PLACES] if p and (Path(p) / "NvInferRuntime.h").is_file()), None)


def tensorrt_header_version(include: Path) -> str | None:
    """major.minor.patch from NvInferVersion.h (TensorRT 11 defines them through TRT_*_ENTERPRISE)."""
    try:
        text = (include / "NvInferVersion.h").read_text(errors="replace")
    except OSError:
        return None
    defines = dict(re.findall(r"^#define (\w+) (\w+)", text, re.MULTILINE))

    def value(name: str) -> str | None:
        seen = defines.get(name)
        while seen is not None and not seen.isdigit():
            seen = defines.get(seen)
        return seen

    parts = [value(f"NV_TENSORRT_{p}") for p in ("MAJOR", "MINOR", "PATCH")]
    return ".".join(parts) if all(parts) else None


def local_gpu_architectures() -> list[str]:
    """Compute capabilities of this machine's GPUs as CMake architectures ("87", "90"): from
    nvidia-smi; on a Jetson without it, CMake's "native" (CMake >= 3.24 asks the GPU)."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        caps = sorted({line.strip().replace(".", "") for line in out.splitlines() if re.fullmatch(r"\d+\.\d+", line.strip())})
        if caps:
            return caps
    if Path("/etc/nv_tegra_release").is_file():  # Jetson (L4T)
        return ["native"]
    return []


@dataclass
class BuildPlan:
    """What one ``build-ops`` run builds, and why the rest is left out."""

    output: Path
    onnxruntime_include: Path | None = None
    nvcc: str | None = None
    architectures: list[str] = field(default_factory=list)
    tensorrt_include: Path | None = None
    skipped: list[str] = field(default_factory=list)

    @property
    def libraries(self) -> list[str]:
        wanted = ((ORT_LIBRARY, self.onnxruntime_include), (CUDA_LIBRARY, self.nvcc),
                  (AUTOREGISTER_LIBRARY, self.nvcc and self.tensorrt_include))
        return [name for name, want in wanted if want]


def plan_build(output: Path, *, onnxruntime_include: str | Path | None = None, onnxruntime: bool = True, cuda: bool = True,
               arch: str | None = None, tensorrt_include: str | Path | None = None) -> BuildPlan:
    """Decide what to build. Errors (one line each) for what was asked and cannot be done; the
    CUDA parts are skipped, with the reason, when nvcc or a GPU is not there and not asked for."""
    import onnxruntime as ort

    plan = BuildPlan(Path(output))
    if shutil.which("cmake") is None:
        raise NativeBuildError("cmake not found on PATH: install it (pip install cmake, or apt install cmake)")
    if find_cxx_compiler() is None:
        raise NativeBuildError("no C++ compiler found (c++, g++ or clang++ on PATH, or $CXX): "
                               "install one (apt install g++) to build pom-deploy's native libraries")
    if onnxruntime:
        plan.onnxruntime_include = find_onnxruntime_header(onnxruntime_include, ort.__version__)
    if cuda:
        plan.nvcc = find_nvcc()
        if plan.nvcc is None:
            if arch:
                raise NativeBuildError("--arch given but nvcc not found (PATH, $CUDACXX or /usr/local/cuda/bin)")
            plan.skipped.append(f"{CUDA_LIBRARY}: nvcc not found (PATH, $CUDACXX or /usr/local/cuda/bin)")
        else:
            plan.architectures = arch.replace(",", ";").split(";") if arch else local_gpu_architectures()
            if not plan.architectures:
                plan.skipped.append(f"{CUDA_LIBRARY}: no GPU found to build for (pass --arch, e.g. --arch 87 for Jetson Orin)")
                plan.nvcc = None
            else:
                plan.tensorrt_include = find_tensorrt_headers(tensorrt_include)
                if plan.tensorrt_include is None:
                    plan.skipped.append("the TensorRT plugin: TensorRT's headers not found (--tensorrt-include, "
                                        "$TENSORRT_INCLUDE_DIR or $TensorRT_ROOT); the CUDA kernels only")
    if not plan.libraries:
        raise NativeBuildError("nothing to build: " + "; ".join(plan.skipped or ["--no-onnxruntime and --no-cuda"]))
    return plan


def cmake_arguments(plan: BuildPlan, build_dir: Path) -> list[str]:
    args = ["cmake", "-S", str(plugins_source()), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_TESTING=OFF",
            f"-DPOM_WITH_ONNXRUNTIME={'ON' if plan.onnxruntime_include else 'OFF'}",
            f"-DPOM_WITH_CUDA={'ON' if plan.nvcc else 'OFF'}"]
    if plan.onnxruntime_include:
        args.append(f"-DONNXRUNTIME_INCLUDE_DIR={plan.onnxruntime_include}")
    if plan.nvcc:
        args += [f"-DCMAKE_CUDA_COMPILER={plan.nvcc}", f"-DCMAKE_CUDA_ARCHITECTURES={';'.join(plan.architectures)}",
                 f"-DPOM_WITH_TENSORRT={'ON' if plan.tensorrt_include else 'OFF'}"]
        if plan.tensorrt_include:
            args.append(f"-DTENSORRT_INCLUDE_DIR={plan.tensorrt_include}")
    return args


def run_build(plan: BuildPlan, jobs: int | None = None, log=None) -> dict[str, dict]:
    """Configure and build in a temporary folder, then move each library into ``plan.output``
    (replacing an older one only once the new one is complete). Returns {library path: build record}."""
    try:
        plan.output.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=plan.output, prefix=".pom-write-check-")
        probe.close()
    except OSError as exc:
        raise NativeBuildError(f"cannot write to {plan.output}: {exc.strerror or exc} (choose another with --output)") from None
    with tempfile.TemporaryDirectory(prefix="pom-build-ops-") as scratch:
        build_dir = Path(scratch) / "build"
        steps = [cmake_arguments(plan, build_dir),
                 ["cmake", "--build", str(build_dir), "--parallel", str(jobs or os.cpu_count() or 1)]]
        for step in steps:
            result = subprocess.run(step, capture_output=True, text=True)
            if log is not None:
                log.write(result.stdout + result.stderr)
            if result.returncode != 0:
                tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["(no output)"]
                raise NativeBuildError(f"{step[0]} {step[1]} failed ({result.returncode}): {tail[0]} (run with --verbose for the log)")
        built = {}
        for name in plan.libraries:
            source = build_dir / name
            if not source.is_file():
                raise NativeBuildError(f"the build made no {name} (run with --verbose for the log)")
            staged = plan.output / f".{name}.partial"
            shutil.copy2(source, staged)
            os.replace(staged, plan.output / name)
            built[str(plan.output / name)] = read_build_info(plan.output / name) or {}
    return built
