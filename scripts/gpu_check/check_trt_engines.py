"""TensorRT engines of a fused export, as `pom-deploy build-engine` builds them: the parts of
issue 27 that only a GPU with TensorRT can confirm (docs/tensorrt.md, "What a GPU run must
still confirm").

1. `--no-plugin`: an export whose two PoM layers have different degrees (two overloads of the
   PolyAggregate function body), built from the bodies -- inlined first, since TensorRT's parser
   keys model-local functions by name only -- against onnxruntime on the CPU.
2. The same export with the plugin (loaded through IPluginRegistry.load_library), built
   `--version-compatible` (the engine bytes saved as built, the plugin library embedded),
   then loaded and run in a fresh process, against onnxruntime.

Needs TensorRT, Polygraphy and a GPU. Exits non-zero when a check fails.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # this checkout's pom_deploy, installed or not
from pom_deploy import export_onnx  # noqa: E402
from pom_deploy.models.layers import PoMv2  # noqa: E402
from pom_deploy.tensorrt import build_engine, compare  # noqa: E402


class TwoDegrees(torch.nn.Module):
    """Two PoM v2 layers of degrees 2 and 3: their PolyAggregate nodes need different bodies."""

    def __init__(self, dim: int = 64):
        super().__init__()
        self.first = PoMv2(dim, 2, 2, 1, 2)
        self.second = PoMv2(dim, 3, 2, 1, 2)

    def forward(self, x):
        return self.second(self.first(x))


def compare_in_fresh_process(onnx_path: Path, engine: Path, plugin: Path) -> bool:
    """compare() in a new process: the engine is deserialized where no plugin was registered by
    a build, so a version-compatible engine must bring its own copy."""
    code = ("import sys; from pom_deploy.tensorrt import compare; r = compare(sys.argv[1], sys.argv[2], plugin=sys.argv[3]); "
            "print('  ', [(o.name, o.max_absdiff, o.passed) for o in r.outputs]); sys.exit(0 if r.passed else 1)")
    return subprocess.run([sys.executable, "-c", code, str(onnx_path), str(engine), str(plugin)], cwd=ROOT).returncode == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plugin", required=True, help="libpom_deploy_plugins.so built with TensorRT's headers")
    args = parser.parse_args()
    failures = 0
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="pom-trt-engines-") as folder:
        onnx_path = export_onnx(TwoDegrees(), Path(folder) / "two_degrees.onnx", fused_ops=True).path
        unfused = build_engine(onnx_path, Path(folder) / "bodies.engine", plugin=False)
        inlined = unfused.sidecar["plugin"]["function_bodies_inlined"]
        report = compare(onnx_path, unfused.engine_path)
        ok = inlined and report.passed
        print(f"--no-plugin, degrees 2 and 3 (bodies inlined: {inlined}): "
              f"max abs {max(o.max_absdiff for o in report.outputs):.3g} {'PASS' if ok else 'FAIL'}")
        failures += not ok

        compatible = build_engine(onnx_path, Path(folder) / "compatible.engine", plugin=args.plugin, version_compatible=True)
        loaded_by = compatible.sidecar["plugin"]["loaded_by"]
        ok = loaded_by == "load_library" and compare_in_fresh_process(onnx_path, compatible.engine_path, Path(args.plugin))
        print(f"--version-compatible with the plugin (loaded by {loaded_by}), run in a fresh process: {'PASS' if ok else 'FAIL'}")
        failures += not ok
    print(f"TensorRT engines: {'all passed' if failures == 0 else f'{failures} FAILED'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
