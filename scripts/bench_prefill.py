"""Chunked prefill: one prompt streamed through a step graph at several chunk sizes, side by side.

1. LM-style model (token embedding, PoMv2 blocks called with ``mask="causal"``, logits): a
   1,024-token prompt one token per step and in chunks of 64, 256 and 1,024, and the same prompt
   through the full graph in one call (the per-token cost a chunked stream is compared with).
2. The zoo's block-causal video model (frames of 64 tokens): 64 frames one frame per step and
   4 and 16 frames per step.

Every chunking gives the model's own outputs (token-/frame-causal inside a chunk); the script
checks that against the token-by-token (frame-by-frame) stream and prints the largest difference
relative to the outputs' scale. Timing: contenders interleaved round by round, medians (see
``_bench_common``); each call streams the whole prompt from zero state, state passed as the
metadata names it. Goals (issue 20): 1,024 tokens in one chunk >= 20x faster than token by token;
the chunked stream's per-token cost within 1.2x of the full graph's.

    python scripts/bench_prefill.py [--threads 2] [--reps 5] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as C

LM = dict(vocab=1000, dim=256, depth=4, degree=2, expand=2, heads=8)
VIDEO = dict(in_dim=64, dim=256, depth=4, degree=2, expand=2, n_sel_heads=8, frame_tokens=64, mlp_ratio=4.0)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="smoke run: 128-token prompt, 8 frames, 2 reps")
    p.add_argument("--json", default=None, help="results JSON (default: <work-dir>/bench_prefill.json)")
    p.add_argument("--work-dir", default=None)
    return p.parse_args()


def causal_lm():
    import torch

    from pom_deploy.models import PoMv2
    from pom_deploy.models.zoo import PoMBlock

    class CausalLM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Embedding(LM["vocab"], LM["dim"])
            self.blocks = torch.nn.ModuleList(
                PoMBlock(PoMv2(LM["dim"], LM["degree"], LM["expand"], 1, LM["heads"]), LM["dim"]) for _ in range(LM["depth"]))
            self.head = torch.nn.Linear(LM["dim"], LM["vocab"])

        def forward(self, ids):
            x = self.embedding(ids)
            for block in self.blocks:
                x = block(x, mask="causal")
            return self.head(x)

    torch.manual_seed(0)
    model = CausalLM().eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, PoMv2):
                module.po_coeff.uniform_(-0.5, 0.5)
    return model


def lm_config(path: Path, tokens: int) -> Path:
    path.write_text(json.dumps({
        "inputs": [{"name": "ids", "shape": ["batch", "tokens"], "dtype": "int64", "kind": "index", "high": LM["vocab"]}],
        "outputs": ["logits"], "dims": {"batch": {"min": 1, "opt": 1, "max": 4}, "tokens": {"min": 1, "opt": 64, "max": tokens}},
        "stream_dim": "tokens"}))
    return path


def streamer(session, spec, name: str, data, chunk: int):
    """() -> outputs of ``data`` streamed from zero state in chunks of ``chunk`` tokens."""
    import numpy as np

    outputs = [o.name for o in session.get_outputs()]

    def run():
        state, pieces = spec.zero_state(data.shape[0]), []
        for start in range(0, data.shape[1], chunk):
            result = dict(zip(outputs, session.run(None, {name: data[:, start:start + chunk], **state})))
            pieces.append(result[outputs[0]])
            state = {spec.past_of[k]: result[k] for k in spec.state_output_names}
        return np.concatenate(pieces, axis=1)

    return run


def measure(label, contenders: dict, per_tokens: int, reference: str, reps: int, out) -> list[dict]:
    import numpy as np

    results = {name: run() for name, run in contenders.items()}
    scale = float(np.abs(results[reference]).max())
    times = C.interleaved(contenders, reps)
    base = C.median(times[reference])
    rows = []
    for name in contenders:
        seconds = C.median(times[name])
        rows.append({"model": label, "contender": name, "median_s": seconds, "us_per_token": 1e6 * seconds / per_tokens,
                     "speedup_vs_" + reference.replace(" ", "_"): base / seconds,
                     "max_diff_rel_to_scale": float(np.abs(results[name] - results[reference]).max()) / scale})
    out.print(C.table(f"{label}: {per_tokens} tokens", ["contender", "median ms", "us/token", f"x vs {reference}", "max diff / scale"],
                      [[r["contender"], C.ms(r["median_s"]), f"{r['us_per_token']:.1f}", f"{base / r['median_s']:.1f}",
                        f"{r['max_diff_rel_to_scale']:.1e}"] for r in rows]))
    return rows


def main() -> int:
    args = parse_args()
    C.configure_waiting(False)
    import numpy as np

    from pom_deploy import export_onnx
    from pom_deploy.models.zoo import create_zoo_model
    from pom_deploy.onnx_graph import read_spec

    C.set_threads(args.threads)
    out = C.console()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench-prefill-"))
    work.mkdir(parents=True, exist_ok=True)
    tokens, frames = (128, 8) if args.quick else (1024, 64)
    reps = 2 if args.quick else args.reps
    info = C.machine_info(args.threads)
    rng = np.random.default_rng(0)

    lm = causal_lm()
    config = lm_config(work / "lm.json", tokens)
    step = export_onnx(lm, work / "lm.step.onnx", config=config, step=True, force=True).path
    full = export_onnx(lm, work / "lm.onnx", config=config, force=True).path
    session, spec = C.ort_session(step, args.threads), read_spec(step)
    full_session = C.ort_session(full, args.threads)
    ids = rng.integers(0, LM["vocab"], (1, tokens)).astype(np.int64)
    contenders = {f"chunk {c}": streamer(session, spec, "ids", ids, c) for c in (1, 64, 256, tokens) if c <= tokens}
    contenders["full graph"] = lambda: full_session.run(None, {"ids": ids})[0]
    rows = measure("LM (causal)", contenders, tokens, "chunk 1", reps, out)

    video = create_zoo_model("video_pom", seed=0, **VIDEO)
    vstep = export_onnx(video, work / "video.step.onnx", step=True, force=True).path
    vsession, vspec = C.ort_session(vstep, args.threads), read_spec(vstep)
    clip = rng.standard_normal((1, frames * VIDEO["frame_tokens"], VIDEO["in_dim"])).astype(np.float32)
    contenders = {f"{f} frame{'s' if f > 1 else ''}/step": streamer(vsession, vspec, "tokens", clip, f * VIDEO["frame_tokens"])
                  for f in (1, 4, 16)}
    rows += measure("video (block-causal)", contenders, clip.shape[1], "1 frame/step", reps, out)

    C.write_json(args.json or work / "bench_prefill.json", {"machine": info, "lm": LM, "video": VIDEO, "rows": rows})
    out.print(f"results: {args.json or work / 'bench_prefill.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
