"""Export at model scale: ``export_onnx`` (with its verification) of a DiT-XL/2-sized PoM model,
time per phase and peak resident memory.

The model: ``create_zoo_model("dit_pom", dim=1152, depth=28, degree=2, expand=2, n_sel_heads=16,
in_channels=4, patch=2, num_classes=1000, max_grid=32, mlp_ratio=4.0)``, 676 M parameters, 2.7 GB
of float32 weights (external data). Peak RSS is the kernel's high-water mark of this process
(VmHWM). With --baseline, a second export first runs the graph optimizer the torch exporter
would run itself (optimize=True), for a side-by-side comparison of the optimize phase in one run
(the peak then covers both exports). Needs about 7 GB of free memory and several minutes on 2
cores; the results go to a JSON file and a table.

    python scripts/bench_export_scale.py [--depth 28] [--threads 2] [--baseline] [--json out.json]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import _bench_common as C

sys.path.insert(0, str(C.REPO))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--depth", type=int, default=28, help="blocks (28 is DiT-XL; fewer for a quick try)")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads for torch and onnxruntime")
    p.add_argument("--no-verify", action="store_true", help="skip verification in onnxruntime")
    p.add_argument("--baseline", action="store_true", help="also export with the torch exporter's own optimizer, first")
    p.add_argument("--json", default=None, help="write the results here as JSON")
    return p.parse_args()


def peak_rss_bytes() -> int:
    return C._proc_kib_field("/proc/self/status", "VmHWM")


def main() -> int:
    args = parse_args()
    C.set_threads(args.threads)
    from pom_deploy.models.zoo import create_zoo_model

    console = C.console()
    info = C.machine_info(args.threads)
    start = time.perf_counter()
    model = create_zoo_model("dit_pom", dim=1152, depth=args.depth, degree=2, expand=2, n_sel_heads=16, in_channels=4,
                             patch=2, num_classes=1000, max_grid=32, mlp_ratio=4.0)
    weights = sum(p.numel() * p.element_size() for p in model.state_dict().values())
    build_seconds = time.perf_counter() - start
    runs = {}
    if args.baseline:
        runs["exporter's optimizer (in trace)"] = export_once(model, args, console, exporter_optimizer=True)
    runs["pom-deploy (exporters.optimize)"] = export_once(model, args, console, exporter_optimizer=False)
    phases = list(next(iter(runs.values()))["seconds"])
    rows = [[phase, *(f"{run['seconds'][phase]:.1f}" for run in runs.values())] for phase in phases]
    rows.append(["export_onnx total", *(f"{run['total']:.1f}" for run in runs.values())])
    console.print(C.table(f"export_onnx, DiT-XL-sized PoM ({weights / 1024**3:.2f} GiB of weights, depth {args.depth}, "
                          f"model built in {build_seconds:.0f} s), seconds", ["phase", *runs], rows))
    peak = peak_rss_bytes()
    console.print(f"peak RSS {peak / 1024**3:.2f} GiB = {peak / weights:.2f} x the weights")
    if args.json:
        C.write_json(args.json, {"machine": info, "weights_bytes": weights, "runs": runs, "peak_rss_bytes": peak})
    return 0


def export_once(model, args, console, exporter_optimizer: bool) -> dict:
    """One export_onnx into a temporary folder: seconds per phase, total, max abs error."""
    from unittest import mock

    import torch

    from pom_deploy import export_onnx
    from pom_deploy.exporters import graphs, onnx_export

    start = time.perf_counter()

    def progress(stage: str) -> None:
        console.print(f"{time.perf_counter() - start:6.1f} s  {stage} (RSS {C.rss_bytes() / 1024**3:.2f} GiB)")

    real_export = torch.onnx.export
    patches = [mock.patch.object(graphs.torch.onnx, "export", lambda *a, **k: real_export(*a, **{**k, "optimize": True})),
               mock.patch.object(onnx_export, "optimize", lambda graph: None)] if exporter_optimizer else []
    with tempfile.TemporaryDirectory() as folder:
        for patch in patches:
            patch.start()
        try:
            result = export_onnx(model, Path(folder) / "dit_xl.onnx", verify=not args.no_verify, progress=progress)
        finally:
            for patch in patches:
                patch.stop()
    return {"seconds": dict(result.seconds), "total": time.perf_counter() - start,
            "max_abs": result.verification.max_abs if result.verification else None}


if __name__ == "__main__":
    sys.exit(main())
