"""Shared fixtures: upstream golden cases, and exports made once per test session."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pom_deploy.models import PoMv1, PoMv2, PoMv2RoPE
from pom_deploy.ops.ort_ops import ORT_OPS_ENV, ORT_OPS_OFF

# The suite runs the same on every checkout: fused graphs run their function bodies unless the
# developer names a PolyAggregate custom-op library (or a test does, as tests/test_cpu_kernel.py).
os.environ.setdefault(ORT_OPS_ENV, ORT_OPS_OFF)

UPSTREAM_DIR = Path(__file__).parent / "fixtures" / "upstream"

# --- the CPUs shared by parallel workers (the README's `pytest -n auto`) ----------------------
# pytest-xdist runs test files in WORKERS processes: each gets its share of the CPUs for torch,
# onnxruntime and the processes it starts (CLI runs, servers, nvcc), so the workers together
# never run more threads than there are CPUs.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
WORKER_THREADS = max(1, (os.cpu_count() or 1) // WORKERS)


def _share_the_cpus() -> None:
    import onnxruntime as ort

    os.environ["OMP_NUM_THREADS"] = str(WORKER_THREADS)  # torch in the processes tests start
    torch.set_num_threads(WORKER_THREADS)
    plain_options, plain_session = ort.SessionOptions, ort.InferenceSession

    class WorkerSessionOptions(plain_options):
        def __init__(self):
            super().__init__()
            self.intra_op_num_threads = WORKER_THREADS  # a test may still set its own count
            self.inter_op_num_threads = 1

    class WorkerInferenceSession(plain_session):
        def __init__(self, path_or_bytes, sess_options=None, *args, **kwargs):
            super().__init__(path_or_bytes, sess_options or WorkerSessionOptions(), *args, **kwargs)

    ort.SessionOptions, ort.InferenceSession = WorkerSessionOptions, WorkerInferenceSession


if WORKERS > 1:
    _share_the_cpus()


def upstream_cases() -> list[str]:
    return sorted(p.stem for p in UPSTREAM_DIR.glob("*.json"))


def load_upstream_case(name: str):
    """(case description, arrays, reference layer loaded with the case's upstream weights)."""
    case = json.loads((UPSTREAM_DIR / f"{name}.json").read_text())
    data = np.load(UPSTREAM_DIR / f"{name}.npz")
    if case["generation"] == "v1":
        layer = PoMv1(**case["ctor"])
    elif case["class"] == "PoM":
        layer = PoMv2(**case["ctor"])
    else:
        layer = PoMv2RoPE(**case["ctor"])
    state_dict = {k[len("param."):]: torch.from_numpy(data[k]) for k in data.files if k.startswith("param.")}
    layer.load_state_dict(state_dict)
    return case, data, layer.eval()


@pytest.fixture(autouse=True)
def _seeded_random():
    """Every test starts from the same torch and numpy seeds, so its random inputs do not
    change from run to run or with the order of the tests."""
    torch.manual_seed(0)
    np.random.seed(0)


def spread_coefficients(layer: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Upstream inits po_coeff within 1e-3 (outputs near zero); tests want visible outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in layer.modules():
            if isinstance(m, PoMv2):
                m.po_coeff.copy_(torch.rand(m.po_coeff.shape, generator=generator) - 0.5)
    return layer.eval()


class CausalLM(torch.nn.Module):
    """A token-causal language model of one's own (not a zoo model): ids -> embedding -> blocks
    calling their PoM layers with ``mask="causal"`` (plain and 1-D RoPE) -> logits."""

    def __init__(self, vocab: int = 50, dim: int = 16):
        from pom_deploy.models.zoo import PoMBlock

        super().__init__()
        self.embedding = torch.nn.Embedding(vocab, dim)
        self.blocks = torch.nn.ModuleList([PoMBlock(PoMv2(dim, 2, 2, 1, 4), dim),
                                           PoMBlock(PoMv2RoPE(dim, 2, 2, 1, 4, max_seq_len=4096), dim)])
        self.head = torch.nn.Linear(dim, vocab)

    def forward(self, ids):
        x = self.embedding(ids)
        for block in self.blocks:
            x = block(x, mask="causal")
        return self.head(x)


CAUSAL_LM_CONFIG = {  # what `pom-export --config` reads for it
    "inputs": [{"name": "ids", "shape": ["batch", "tokens"], "dtype": "int64", "kind": "index", "high": 50}],
    "outputs": ["logits"], "dims": {"batch": {"min": 1, "opt": 2, "max": 8}, "tokens": {"min": 1, "opt": 32, "max": 4096}},
    "stream_dim": "tokens",
}


@pytest.fixture(scope="session")
def causal_lm():
    torch.manual_seed(0)
    return spread_coefficients(CausalLM())


@pytest.fixture(scope="session")
def video_model():
    from pom_deploy.models.zoo import create_zoo_model

    return create_zoo_model("video_pom", seed=0)


@pytest.fixture(scope="session")
def exported_video(tmp_path_factory, video_model):
    """The video zoo model exported once as a full and a step graph."""
    from pom_deploy.exporters import export_onnx

    folder = tmp_path_factory.mktemp("video")
    full = export_onnx(video_model, folder / "video.onnx")
    step = export_onnx(video_model, folder / "video.step.onnx", step=True)
    return full, step


@pytest.fixture(scope="session")
def exported_lm(tmp_path_factory, causal_lm):
    """The token-causal LM exported once as a step graph, with a --config file."""
    from pom_deploy.exporters import export_onnx

    folder = tmp_path_factory.mktemp("lm")
    (folder / "lm.json").write_text(json.dumps(CAUSAL_LM_CONFIG))
    return export_onnx(causal_lm, folder / "lm.step.onnx", step=True, config=folder / "lm.json")


# --- the CUDA kernels' CMake build, started early in the background ---------------------------
# nvcc costs about 30 s of CPU per architecture: started once collection shows a selected test
# needs it, it overlaps with the other tests, and the kernel_build fixture
# (tests/test_plugin_poly_aggregate.py) waits for it. The project is configured as users get it
# (the log's first "PolyAggregate CUDA architectures" line is the default list, which
# test_kernels_compile_for_every_architecture checks), then built for kernel_test_architectures():
# the oldest, Jetson Orin, Thor and PTX of the newest. The kernel source has no per-architecture
# code, so the other SASS targets compile the same code (scripts/gpu_check.sh builds sm_90).

PLUGINS_DIR = Path(__file__).resolve().parents[1] / "plugins"
_KERNEL_BUILD: dict = {}


def nvcc_version() -> tuple[int, int]:
    import re
    import subprocess

    out = subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout
    major, minor = re.search(r"release (\d+)\.(\d+)", out).groups()
    return int(major), int(minor)


def kernel_test_architectures() -> list[str]:
    """What the kernel_build fixture builds: sm_75, Orin's sm_87, Thor's (sm_110 from CUDA 13,
    sm_101 in 12.8/12.9) and PTX of the newest default architecture."""
    version = nvcc_version()
    if version >= (13, 0):
        return ["75-real", "87-real", "110-real", "120-virtual"]
    if version >= (12, 8):
        return ["75-real", "87-real", "101-real", "120-virtual"]
    return ["75-real", "87-real", "90-virtual"]


def _start_kernel_build() -> None:
    import shutil
    import subprocess
    import tempfile

    if not all(shutil.which(tool) for tool in ("cmake", "nvcc", "g++")):
        return
    folder = Path(tempfile.mkdtemp(prefix="pom-kernel-build-"))
    log = open(folder / "build.log", "wb")
    configure = ["cmake", "-S", str(PLUGINS_DIR), "-B", str(folder / "build"), "-DPOM_WITH_TENSORRT=OFF",
                 "-DPOM_WITH_ONNXRUNTIME=OFF", "-DBUILD_TESTING=OFF", f"-DCMAKE_CUDA_COMPILER={shutil.which('nvcc')}"]
    configure.append(f"-DPOM_NVCC_THREADS={WORKER_THREADS if WORKERS > 1 else 0}")  # 0: nvcc takes every CPU
    subset = configure + ["-DCMAKE_CUDA_ARCHITECTURES=" + ";".join(kernel_test_architectures())]
    build = ["cmake", "--build", str(folder / "build"), "-j", "1"]  # nvcc compiles its architectures in parallel
    command = " && ".join(" ".join(f"'{part}'" for part in step) for step in (configure, subset, build))
    _KERNEL_BUILD.update(folder=folder, log=log, started=time.perf_counter(),
                         process=subprocess.Popen(["bash", "-c", command], stdout=log, stderr=subprocess.STDOUT,
                                                  start_new_session=True))


def pytest_collection_modifyitems(session, config, items):
    # Parallel workers each collect every test: there the fixture starts the build when a test
    # needs it, and the other workers keep the CPUs busy meanwhile.
    if WORKERS == 1 and any("kernel_build" in getattr(item, "fixturenames", ()) for item in items):
        _start_kernel_build()


def pytest_sessionfinish(session, exitstatus):
    """Stop the build if no test waited for it (or one failed first), and remove its folder."""
    import shutil

    process = _KERNEL_BUILD.get("process")
    if process is None:
        return
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    _KERNEL_BUILD["log"].close()
    shutil.rmtree(_KERNEL_BUILD["folder"], ignore_errors=True)


@pytest.fixture(scope="session")
def background_kernel_build() -> dict:
    """{"library", "log", "seconds"} of the kernels' build, once it has finished."""
    if "process" not in _KERNEL_BUILD:
        _start_kernel_build()
    process = _KERNEL_BUILD.get("process")
    if process is None:
        pytest.skip("cmake, nvcc or g++ not found on PATH")
    returncode = process.wait()
    seconds = time.perf_counter() - _KERNEL_BUILD["started"]
    _KERNEL_BUILD["log"].flush()
    if returncode != 0:
        pytest.fail(f"the kernels' CMake build failed ({returncode}):\n{(_KERNEL_BUILD['folder'] / 'build.log').read_text()[-6000:]}")
    return {"library": _KERNEL_BUILD["folder"] / "build" / "libpom_deploy_plugins.so",
            "log": (_KERNEL_BUILD["folder"] / "build.log").read_text(), "seconds": seconds}
