"""Helpers shared by ``bench_export.py`` and ``bench_streaming.py``.

Timing rule for every benchmark here: contenders are measured side by side in one run,
interleaved round by round (the order rotates each round), and compared by medians, so
that load from other processes on the machine affects all of them alike.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent


SPIN = False  # set by configure_waiting


def configure_waiting(spin: bool) -> None:
    """Idle worker threads of both runtimes block instead of spinning (default), or both keep
    their libraries' defaults (``spin=True``: onnxruntime workers and torch's OpenMP threads
    spin-wait after each call). Spinning threads of one contender steal the cores from the next
    one in an interleaved run on a small machine: measured here on 2 cores, eager PyTorch at
    N=256 took 100 ms next to a spinning onnxruntime session and 8-18 ms without. Must run
    before torch is imported."""
    global SPIN
    SPIN = spin
    if not spin:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def set_threads(threads: int) -> None:
    """Same thread settings for torch and onnxruntime: ``threads`` intra-op, 1 inter-op."""
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only settable before the first parallel region
        pass


def ort_session(path: str | Path, threads: int, profile_prefix: str | None = None, custom_ops_library: str | Path | None = None):
    """An onnxruntime CPU session with the benchmarks' thread settings; ``custom_ops_library``:
    a custom-op library to register (pom-deploy's PolyAggregate kernel), none when None."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if not SPIN:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    if custom_ops_library is not None:
        from pom_deploy.ops.ort_ops import register_ort_ops

        register_ort_ops(options, custom_ops_library)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def interleaved(contenders: dict[str, Callable[[], Any]], reps: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each contender: ``warmup`` untimed calls each, then ``reps``
    rounds; every round calls each contender once, in an order that rotates by round."""
    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            contenders[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(reps):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            start = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - start)
    return times


def median(values) -> float:
    return statistics.median(values)


def _proc_kib_field(path: str, key: str) -> int:
    """Bytes of a "Key:  N kB" line of a /proc file (0 when absent)."""
    with open(path) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def rss_bytes() -> int:
    """Resident set size of this process (VmRSS of /proc/self/status)."""
    return _proc_kib_field("/proc/self/status", "VmRSS")


def mem_available_bytes() -> int:
    return _proc_kib_field("/proc/meminfo", "MemAvailable")


def machine_info(threads: int) -> dict[str, Any]:
    import numpy
    import onnx
    import onnxruntime
    import torch

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((row.split(":", 1)[1].strip() for row in f if row.startswith("model name")), cpu)
    except OSError:
        pass
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            line = next((row for row in f if row.startswith("flags")), "")
        flags = " ".join(sorted(f for f in line.split() if f in ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni")))
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    return {
        "machine": platform.machine(), "cpu": cpu, "cpu_flags": flags, "logical_cpus": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3, 1),
        "python": platform.python_version(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
        "onnx": onnx.__version__, "numpy": numpy.__version__, "threads": threads, "git_commit": commit,
        "loadavg_at_start": os.getloadavg(), "spin_wait": SPIN, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
    }


def write_json(path: str | Path, data: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=float) + "\n")


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}" if seconds < 10 else f"{seconds * 1e3:.0f}"


def console():
    from rich.console import Console

    return Console(width=140)


def table(title: str, columns: list[str], rows: list[list[Any]]):
    from rich.table import Table

    t = Table(title=title, show_lines=False)
    for i, c in enumerate(columns):
        t.add_column(c, justify="left" if i == 0 else "right")
    for row in rows:
        t.add_row(*[str(x) for x in row])
    return t


def ort_profile_by_op(profile_json: str | Path, runs_to_skip: int = 0) -> dict[str, float]:
    """Total node time (seconds) per op type from an onnxruntime profile, skipping the first
    ``runs_to_skip`` session runs (warm-up)."""
    events = json.loads(Path(profile_json).read_text())
    runs = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    start = runs[runs_to_skip] if len(runs) > runs_to_skip else 0
    totals: dict[str, float] = {}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or e["ts"] < start:
            continue
        op = e.get("args", {}).get("op_name", "?")
        totals[op] = totals.get(op, 0.0) + e["dur"] * 1e-6
    return totals


GEMM_OPS = ("MatMul", "Gemm", "FusedMatMul", "FusedGemm")  # onnxruntime's GEMM kernels (Fused*: + a fused activation/scale)
KERNEL_OP = "PolyAggregate"  # the op type the custom-op library's kernel shows in a profile


def ort_profile_per_run(path: str | Path, threads: int, feeds: dict, runs: int, profile_prefix: str,
                        custom_ops_library: str | Path | None = None, warmup: int = 1) -> dict[str, float]:
    """Kernel seconds per run by op type: a profiled session (same settings as ``ort_session``)
    run ``warmup`` + ``runs`` times, the warm-up runs left out."""
    session = ort_session(path, threads, profile_prefix=profile_prefix, custom_ops_library=custom_ops_library)
    for _ in range(warmup + runs):
        session.run(None, feeds)
    by_op = ort_profile_by_op(session.end_profiling(), runs_to_skip=warmup)
    return {op: t / runs for op, t in sorted(by_op.items(), key=lambda kv: -kv[1])}


def gemm_seconds(per_run: dict[str, float]) -> float:
    """Sum of the GEMM kernels' time in a per-run profile (``ort_profile_per_run``)."""
    return sum(t for op, t in per_run.items() if op in GEMM_OPS)


def require_kernel(per_run: dict[str, float], what: str) -> None:
    """Fail loudly unless the profile shows the PolyAggregate kernel ran (rather than the
    function body onnxruntime inlines when the library is not registered)."""
    if KERNEL_OP not in per_run:
        raise RuntimeError(f"{what}: no {KERNEL_OP} op in the onnxruntime profile (ops: {', '.join(per_run)}): "
                           "the custom-op library's kernel did not run")


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def times_str(value: float | None) -> str:
    """``1.23x``, or ``n/a`` when not measured."""
    return "n/a" if value is None else f"{value:.2f}x"


def ms_or_na(seconds: float | None) -> str:
    return "n/a" if seconds is None else ms(seconds)


def plot_path(requested: str | None, quick: bool, work: Path, figure: str) -> Path | None:
    """Where a run's PNG plot goes: ``requested`` ('' for none); else, for a full run, the docs'
    own figure docs/img/<figure>, and for a ``--quick`` run the run's work dir: a smoke run's
    numbers are not for the docs, so it never overwrites the page's figures."""
    if requested is not None:
        return Path(requested) if requested else None
    return (work if quick else REPO / "docs" / "img") / figure


def require_matplotlib(plot_requested: bool) -> None:
    """Stop with one line, before minutes of measuring, when a plot is asked for and
    matplotlib (the ``bench`` extra) is not installed."""
    if not plot_requested:
        return
    try:
        import matplotlib  # noqa: F401  (only whether it imports)
    except ModuleNotFoundError:
        raise SystemExit("error: the plot needs matplotlib, the 'bench' extra: pip install -e '.[bench]' "
                         "(or --plot '' for no plot)") from None


def save_figure(fig, path) -> None:
    """Lay out and write a matplotlib figure as the docs' PNGs are written (110 dpi)."""
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
