#!/usr/bin/env python
"""Streaming step graphs in onnxruntime CPU: PoM (constant state) vs attention + KV cache.

1. PoM: ``BlockCausalVideoPoM`` (in_dim 64, dim 512, depth 4, degree 3, expand 2, 8
   selection heads, 256-token frames, MLP 4x) exported with ``export_onnx(step=True)``, run
   frame by frame for ``--steps`` steps (one 256-token frame per step, batch 1): per-step
   latency and process RSS after every step.
2. Attention baseline written here: the same blocks with 8-head softmax attention instead of
   the PoM mixer, block-causal over frames (a frame sees itself and all earlier frames), exported
   with ``torch.onnx.export(dynamo=True)``; its state is the KV cache, explicit inputs
   ``past.{i}.key/value`` (batch, heads, past_tokens, 64) and outputs ``present.{i}.*``
   growing by 256 tokens per step. It runs sequentially for ``--attn-steps`` steps; later
   points of its curve (steps 200, 500, 1000) are single steps timed with a cache of the
   length that step would have (random values: the cost of a step depends on the cache
   length only).
3. Ratios at steps 10, 100, 1000: PoM and attention run the same step (PoM from its state
   saved at the step before, attention with the cache of that length) interleaved, medians.
4. Numerics over 100,000 steps: the running-mean state in float32 vs a float64 reference
   (see ``numerics`` below for exactly what is checked).

Threads: ``--threads`` intra-op (default: all CPUs), 1 inter-op, for torch and onnxruntime.

    python scripts/bench_streaming.py            # full run (about 3 minutes on 2 idle-ish cores, more under load)
    python scripts/bench_streaming.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as C

ARCH = dict(in_dim=64, dim=512, depth=4, degree=3, expand=2, n_sel_heads=8, frame_tokens=256, mlp_ratio=4.0)
HEADS = 8


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 60 PoM steps, small attention run, 5,000-step numerics")
    p.add_argument("--steps", type=int, default=None, help="PoM steps (default 1000; quick 60)")
    p.add_argument("--attn-steps", type=int, default=None, help="attention steps run sequentially (default 100; quick 20)")
    p.add_argument("--ratio-steps", default=None, help="steps where PoM and attention are compared interleaved (default 10,100,1000)")
    p.add_argument("--curve-steps", default=None, help="extra single-step points of the attention curve beyond --attn-steps "
                                                         "(default 200,500,1000)")
    p.add_argument("--numerics-steps", type=int, default=None, help="running-mean steps for the numerics check (default 100000)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--json", default=None, help="results JSON (default: <work-dir>/bench_streaming.json)")
    p.add_argument("--plot", default=None, help="PNG plot path ('' for none; needs matplotlib, the 'bench' extra; default: "
                   "docs/img/bench_streaming.png, with --quick <work-dir>/bench_streaming.png: a smoke run's numbers are not "
                   "for the docs)")
    p.add_argument("--spin", action="store_true", help="keep the runtimes' spin-waiting idle threads (default: both block; "
                   "onnxruntime session.intra_op.allow_spinning=0 and OMP_WAIT_POLICY=PASSIVE for torch)")
    p.add_argument("--work-dir", default=None)
    args = p.parse_args()
    quick = args.quick
    args.steps = args.steps or (60 if quick else 1000)
    args.attn_steps = args.attn_steps or (20 if quick else 100)
    args.ratio_steps = [int(s) for s in (args.ratio_steps or ("10,20,60" if quick else "10,100,1000")).split(",")]
    args.curve_steps = [int(s) for s in (args.curve_steps or ("40,60" if quick else "200,500,1000")).split(",")]
    args.numerics_steps = args.numerics_steps or (5000 if quick else 100_000)
    return args


# --- the attention baseline ----------------------------------------------------------

def build_attention_model(seed: int = 0):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    from pom_deploy.models.zoo import FeedForward

    class Attention(nn.Module):
        def __init__(self, dim, heads):
            super().__init__()
            self.heads, self.head_dim = heads, dim // heads
            self.qkv = nn.Linear(dim, 3 * dim)
            self.out = nn.Linear(dim, dim)

        def forward(self, x, past_k, past_v):
            b, t, d = x.shape
            q, k, v = self.qkv(x).view(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
            k = torch.cat([past_k, k], dim=2)
            v = torch.cat([past_v, v], dim=2)
            # block-causal over frames: the current frame sees itself and every cached frame
            o = F.scaled_dot_product_attention(q, k, v)
            return self.out(o.transpose(1, 2).reshape(b, t, d)), k, v

    class Block(nn.Module):
        def __init__(self, dim, mlp_ratio):
            super().__init__()
            self.norm1, self.mixer = nn.LayerNorm(dim), Attention(dim, HEADS)
            self.norm2, self.ffn = nn.LayerNorm(dim), FeedForward(dim, mlp_ratio)

        def forward(self, x, past_k, past_v):
            y, k, v = self.mixer(self.norm1(x), past_k, past_v)
            x = x + y
            return x + self.ffn(self.norm2(x)), k, v

    class AttentionVideoStep(nn.Module):
        """forward(tokens, past.0.key, past.0.value, ...) -> (output, present.0.key, ...)."""

        def __init__(self, in_dim, dim, depth, mlp_ratio, **_):
            super().__init__()
            self.in_proj = nn.Linear(in_dim, dim)
            self.blocks = nn.ModuleList(Block(dim, mlp_ratio) for _ in range(depth))
            self.norm = nn.LayerNorm(dim)
            self.out_proj = nn.Linear(dim, in_dim)

        def forward(self, tokens, *past):
            x = self.in_proj(tokens)
            present = []
            for i, block in enumerate(self.blocks):
                x, k, v = block(x, past[2 * i], past[2 * i + 1])
                present += [k, v]
            return (self.out_proj(self.norm(x)), *present)

    torch.manual_seed(seed)
    return AttentionVideoStep(**ARCH).eval()


def export_attention(model, path: Path):
    import torch

    depth, dim, ft = ARCH["depth"], ARCH["dim"], ARCH["frame_tokens"]
    past = torch.export.Dim("past_tokens", min=1, max=1 << 20)
    inputs = [torch.randn(1, ft, ARCH["in_dim"])] + [torch.randn(1, HEADS, 2 * ft, dim // HEADS) for _ in range(2 * depth)]
    names = ["tokens"] + [f"past.{i}.{kv}" for i in range(depth) for kv in ("key", "value")]
    outputs = ["output"] + [f"present.{i}.{kv}" for i in range(depth) for kv in ("key", "value")]
    shapes = ({},) + tuple({2: past} for _ in range(2 * depth))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, tuple(inputs), dynamo=True, opset_version=18, input_names=names,
                                    output_names=outputs, dynamic_shapes=(shapes[0], shapes[1:]), optimize=True, verbose=False)
    program.save(str(path))
    return names, outputs


def empty_cache(past_tokens: int, rng):
    import numpy as np

    depth, dim = ARCH["depth"], ARCH["dim"]
    shape = (1, HEADS, past_tokens, dim // HEADS)
    if past_tokens == 0:
        return {f"past.{i}.{kv}": np.zeros(shape, np.float32) for i in range(depth) for kv in ("key", "value")}
    return {f"past.{i}.{kv}": rng.standard_normal(shape, dtype=np.float32) for i in range(depth) for kv in ("key", "value")}


# --- numerics -----------------------------------------------------------------------------

def numerics_running_mean(steps: int, channels: int = 1024, chunk_tokens: int = 256, seed: int = 0) -> dict:
    """``merge_running_mean`` (once ``running_mean_update``) in float32 torch (the formula every step graph's state path
    uses) folded over ``steps`` random float32 chunk means, vs the float64 mean of the very same
    chunk means (a float64 running sum / count). Two streams of chunk means per channel:
    'offset' = a per-channel constant in [-1, 1] plus N(0, 0.5) noise (features with a non-zero
    mean, as PoM's are), and 'zero-mean' N(0, 1) (the mean shrinks to ~1/sqrt(steps), so the
    error is also given relative to the data's scale). Errors are max over channels."""
    import numpy as np
    import torch

    from pom_deploy.models.functional import merge_running_mean

    rng = np.random.default_rng(seed)
    offset = rng.uniform(-1, 1, channels).astype(np.float32)
    out = {}
    for name, base, noise in (("offset", offset, 0.5), ("zero-mean", np.zeros(channels, np.float32), 1.0)):
        mean = torch.zeros(1, 1, channels, dtype=torch.float32)
        count = torch.zeros(1, 1, dtype=torch.int64)
        chunk_counts = torch.full((1, 1), float(chunk_tokens))
        total = np.zeros(channels, np.float64)
        checkpoints, block, done = {}, 10_000, 0
        while done < steps:
            n = min(block, steps - done)
            chunk = (base + noise * rng.standard_normal((n, channels), dtype=np.float32)).astype(np.float32)
            rows = torch.from_numpy(chunk)
            for j in range(n):
                mean, count = merge_running_mean(mean, count, rows[j].view(1, 1, -1), chunk_counts), count + chunk_tokens
                k = done + j + 1
                if k in (10, 100, 1000, 10_000, 100_000, steps):
                    ref = (total + chunk[: j + 1].astype(np.float64).sum(axis=0)) / k
                    err = np.abs(mean.numpy().reshape(-1).astype(np.float64) - ref)
                    checkpoints[k] = {"max_abs": float(err.max()), "rel_to_max_abs_mean": float(err.max() / np.abs(ref).max()),
                                      "rel_to_data_scale": float(err.max() / noise),
                                      "max_per_channel_rel": float((err / np.maximum(np.abs(ref), 1e-30)).max())}
            total += chunk.astype(np.float64).sum(axis=0)
            done += n
        out[name] = {"checkpoints": checkpoints, "final": checkpoints[steps], "count": int(count.item()),
                     "count_expected": steps * chunk_tokens}
    return out


def numerics_step_graph(steps: int, work: Path, threads: int, seed: int = 0) -> dict:
    """The state path of a real step graph: a small video_pom (dim 32, frames of 8 tokens) run
    in onnxruntime for ``steps`` frames; its ``present.0.mean`` after the last step vs the float64
    mean over all frames of layer 0's chunk features computed by the float64 PyTorch model
    (layer 0's chunk features depend on the frame only, not on the state)."""
    import numpy as np
    import torch

    from pom_deploy import export_onnx
    from pom_deploy.models import functional as P
    from pom_deploy.models.zoo import create_zoo_model
    from pom_deploy.onnx_graph import read_spec

    model = create_zoo_model("video_pom", in_dim=16, dim=32, depth=2, frame_tokens=8)
    path = work / "video_pom_small_step.onnx"
    export_onnx(model, path, step=True, force=True)
    session = C.ort_session(path, threads)
    rng = np.random.default_rng(seed)
    layer = model.blocks[0].mixer
    spec = read_spec(path)  # state names and shapes from the metadata (docs/metadata.md)
    state = spec.zero_state(1)
    names = [o.name for o in session.get_outputs()]
    model64 = model.double()
    total = np.zeros(layer.state_channels, np.float64)
    clock = time.perf_counter()
    block, done = 5000, 0
    while done < steps:
        n = min(block, steps - done)
        frames = (0.5 + rng.standard_normal((n, 8, 16), dtype=np.float32)).astype(np.float32)
        for j in range(n):
            result = dict(zip(names, session.run(None, {"tokens": frames[j:j + 1], **state})))
            state = {spec.past_of[k]: result[k] for k in spec.state_output_names}
        with torch.no_grad():
            x = model64.blocks[0].norm1(model64.in_proj(torch.from_numpy(frames).double()))
            h, _ = layer._projections(x, x)
            total += P.v2_features(h, layer.po_coeff).mean(dim=1).sum(dim=0).numpy()
        done += n
    ref = total / steps
    got = state["past.0.mean"].reshape(-1).astype(np.float64)
    err = np.abs(got - ref)
    model.float()
    return {"steps": steps, "seconds": time.perf_counter() - clock, "max_abs": float(err.max()),
            "rel_to_max_abs_mean": float(err.max() / np.abs(ref).max()),
            "max_per_channel_rel": float((err / np.maximum(np.abs(ref), 1e-30)).max()),
            "count": int(state["past.0.count"].reshape(-1)[0]), "count_expected": steps * 8}


# --- main ---------------------------------------------------------------------------------

def main():
    args = parse_args()
    C.require_matplotlib(args.plot != "")
    C.configure_waiting(args.spin)
    C.set_threads(args.threads)  # before torch is imported (the steps below import it)
    import numpy as np

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="pom-bench-streaming-"))
    work.mkdir(parents=True, exist_ok=True)
    out = C.console()
    info = C.machine_info(args.threads)
    started = time.perf_counter()
    out.print(f"[bold]bench_streaming[/bold] {'(quick)' if args.quick else '(full)'}: {info['cpu']} x{info['logical_cpus']}, "
              f"torch {info['torch']}, onnxruntime {info['onnxruntime']}; {args.threads} intra-op threads, 1 inter-op; "
              f"work dir {work}")
    results = {"machine": info, "settings": {k: v for k, v in vars(args).items()}, "arch": ARCH, "attention_heads": HEADS}

    pom, sess_pom = prepare_pom(work, args.threads, out)
    frames, pom_states, pom_lat, pom_rss = run_pom_sequentially(pom, sess_pom, args)
    results["pom"] = summarize_pom_run(pom_lat, pom_rss, args.steps, out)
    results["pom"].update(measure_pom_interleaved(sess_pom, frames, pom_states, args, out))
    results["pom_curve"] = {"latency_ms": [x * 1e3 for x in pom_lat], "rss_mib": [x / 2**20 for x in pom_rss]}
    del frames

    attn, sess_attn, in_names, out_names = prepare_attention(work, args.threads, out)
    rng = np.random.default_rng(1)  # draws the attention frames and synthetic caches of every step below, in order
    results["attention_check_max_abs_diff_vs_eager"] = check_attention_graph(attn, sess_attn, in_names, out_names, rng, out)
    attn_caches, results["attention_curve"] = run_attention_sequentially(sess_attn, out_names, rng, args, out)
    results["ratios"], results["attention_curve"]["single_step_points"] = measure_ratios(
        sess_attn, sess_pom, attn_caches, pom_states, rng, args, out)
    tabulate_ratios(results["ratios"], args.threads, out)

    results["numerics_running_mean"], results["numerics_step_graph"] = measure_numerics(args, work, out)
    tabulate_numerics(results["numerics_running_mean"], results["numerics_step_graph"], args.numerics_steps, out)
    results["goals"] = evaluate_goals(results, args.numerics_steps, out)
    results["total_seconds"] = time.perf_counter() - started
    results["loadavg_at_end"] = os.getloadavg()

    json_path = Path(args.json) if args.json else work / "bench_streaming.json"
    C.write_json(json_path, results)
    out.print(f"results: {json_path}; total {results['total_seconds']:.0f} s")
    plot_path = C.plot_path(args.plot, args.quick, work, "bench_streaming.png")
    if plot_path:
        plot(results, plot_path)
        out.print(f"plot: {plot_path}")


def random_frame(rng):
    """One 256-token input frame for the attention graph (every attention step draws its own)."""
    import numpy as np

    return rng.standard_normal((1, ARCH["frame_tokens"], ARCH["in_dim"]), dtype=np.float32)


def kv_cache_bytes(past_tokens: int) -> int:
    """Size of the attention graph's KV cache (keys and values of every layer) for ``past_tokens``."""
    return 2 * ARCH["depth"] * HEADS * past_tokens * (ARCH["dim"] // HEADS) * 4


def prepare_pom(work: Path, threads: int, out):
    """The PoM model and an onnxruntime session of its step graph (``export_onnx(step=True)``)."""
    from pom_deploy import export_onnx
    from pom_deploy.models.zoo import create_zoo_model

    pom = create_zoo_model("video_pom", **ARCH)  # po_coeff spread to +-0.5 by the zoo
    pom_path = work / "video_pom_step.onnx"
    clock = time.perf_counter()
    export_onnx(pom, pom_path, step=True, force=True)
    out.print(f"PoM step graph exported in {time.perf_counter() - clock:.1f} s "
              f"({sum(p.numel() for p in pom.parameters()) / 1e6:.1f} M params)")
    return pom, C.ort_session(pom_path, threads)


def run_pom_sequentially(pom, sess_pom, args):
    """--steps frames one after another from an empty state: latency and RSS after every step,
    plus the states that the interleaved comparisons below start from."""
    import numpy as np

    from pom_deploy.spec import METADATA_KEY, GraphSpec

    ft = ARCH["frame_tokens"]
    pom_out_names = [o.name for o in sess_pom.get_outputs()]
    rng = np.random.default_rng(0)
    frames = rng.standard_normal((args.steps, 1, ft, ARCH["in_dim"]), dtype=np.float32)
    # state names and shapes from the metadata (docs/metadata.md)
    spec = GraphSpec.from_json(sess_pom.get_modelmeta().custom_metadata_map[METADATA_KEY])
    state = spec.zero_state(1)
    pom_states = {0: dict(state)}
    keep = {k - 1 for k in args.ratio_steps + [10, args.steps]}
    pom_lat, pom_rss = [], []
    for t in range(args.steps):
        clock = time.perf_counter()
        result = sess_pom.run(None, {"tokens": frames[t], **state})
        pom_lat.append(time.perf_counter() - clock)
        state = {spec.past_of[n]: v for n, v in zip(pom_out_names, result) if n in spec.past_of}
        del result
        pom_rss.append(C.rss_bytes())
        if t + 1 in keep:
            pom_states[t + 1] = dict(state)
    assert int(state["past.0.count"].reshape(-1)[0]) == args.steps * ft
    return frames, pom_states, pom_lat, pom_rss


def summarize_pom_run(pom_lat: list[float], pom_rss: list[int], steps: int, out) -> dict:
    """Whether the sequential PoM run stays as fast and as small late as early (medians, RSS after warm-up)."""
    import numpy as np

    win = lambda lat, a, b: float(np.median(lat[a - 1:b]))  # steps a..b inclusive, 1-based
    early = win(pom_lat, 10, 20)
    late = win(pom_lat, steps - 10, steps)
    warm = 20 if steps > 40 else 5
    rss_after_warm = np.array(pom_rss[warm - 1:]) / 2**20
    summary = {
        "steps": steps, "median_ms_steps_10_20": early * 1e3,
        f"median_ms_steps_{steps - 10}_{steps}": late * 1e3, "late_over_early_sequential": late / early,
        "rss_mib_at_step": {k: pom_rss[k - 1] / 2**20 for k in (1, warm, steps // 2, steps)},
        "rss_mib_growth_after_warmup": float(rss_after_warm[-1] - rss_after_warm[0]),
        "rss_mib_range_after_warmup": float(rss_after_warm.max() - rss_after_warm.min()),
    }
    out.print(f"PoM: {steps} steps, median step {C.ms(float(np.median(pom_lat)))} ms; steps 10-20 {C.ms(early)} ms, "
              f"steps {steps - 10}-{steps} {C.ms(late)} ms (ratio {late / early:.3f}); RSS {pom_rss[warm - 1] / 2**20:.1f} MiB "
              f"at step {warm} -> {pom_rss[-1] / 2**20:.1f} MiB at step {steps}")
    return summary


def measure_pom_interleaved(sess_pom, frames, pom_states: dict, args, out) -> dict:
    """Load-robust check of the late/early ratio: step 10 and step N from their saved states, interleaved,
    with an A/A control (step 10 twice, as two contenders) that shows the noise of such a ratio."""
    s_early, s_late = pom_states[9], pom_states[args.steps - 1]
    times = C.interleaved({"step_10": lambda: sess_pom.run(None, {"tokens": frames[9], **s_early}),
                           f"step_{args.steps}": lambda: sess_pom.run(None, {"tokens": frames[-1], **s_late}),
                           "step_10_again": lambda: sess_pom.run(None, {"tokens": frames[9], **s_early})},
                          reps=10 if args.quick else 60, warmup=2)
    inter = C.median(times[f"step_{args.steps}"]) / C.median(times["step_10"])
    control = C.median(times["step_10_again"]) / C.median(times["step_10"])
    out.print(f"PoM interleaved re-run: step {args.steps} / step 10 = {inter:.3f} (A/A control: step 10 / step 10 = {control:.3f})")
    return {"late_over_early_interleaved": inter, "aa_control_interleaved": control}


def prepare_attention(work: Path, threads: int, out):
    """The attention baseline model and an onnxruntime session of its KV-cache step graph."""
    attn = build_attention_model()
    attn_path = work / "attention_kv_step.onnx"
    clock = time.perf_counter()
    in_names, out_names = export_attention(attn, attn_path)
    out.print(f"attention step graph exported in {time.perf_counter() - clock:.1f} s "
              f"({sum(p.numel() for p in attn.parameters()) / 1e6:.1f} M params)")
    return attn, C.ort_session(attn_path, threads), in_names, out_names


def check_attention_graph(attn, sess_attn, in_names: list[str], out_names: list[str], rng, out) -> float:
    """That the exported attention graph computes what the eager model does: max abs difference over 3 steps, same caches."""
    import numpy as np
    import torch

    cache, diff = empty_cache(0, rng), 0.0
    with torch.no_grad():
        for _ in range(3):
            x = random_frame(rng)
            expected = attn(torch.from_numpy(x), *[torch.from_numpy(cache[n]) for n in in_names[1:]])
            got = sess_attn.run(None, {"tokens": x, **cache})
            diff = max([diff] + [float(np.abs(g - e.numpy()).max()) for g, e in zip(got, expected)])
            cache = {n.replace("present.", "past."): v for n, v in zip(out_names, got) if n.startswith("present.")}
    out.print(f"attention graph vs eager over 3 steps: max abs diff {diff:.2e}")
    return diff


def run_attention_sequentially(sess_attn, out_names: list[str], rng, args, out):
    """--attn-steps steps from an empty cache: latency and RSS as the KV cache grows, plus the
    caches that the interleaved comparisons below start from."""
    cache = empty_cache(0, rng)
    attn_lat, attn_rss, attn_caches = [], [], {}
    keep_attn = {k - 1 for k in args.ratio_steps if k - 1 <= args.attn_steps}
    seq_clock = time.perf_counter()
    for t in range(args.attn_steps):
        if t in keep_attn:
            attn_caches[t] = cache
        x = random_frame(rng)
        clock = time.perf_counter()
        result = sess_attn.run(None, {"tokens": x, **cache})
        attn_lat.append(time.perf_counter() - clock)
        cache = {n.replace("present.", "past."): v for n, v in zip(out_names, result) if n.startswith("present.")}
        del result
        attn_rss.append(C.rss_bytes())
    out.print(f"attention: {args.attn_steps} sequential steps in {time.perf_counter() - seq_clock:.1f} s; step {args.attn_steps} "
              f"{C.ms(attn_lat[-1])} ms, cache {cache['past.0.key'].shape[2]} tokens, RSS {attn_rss[-1] / 2**20:.0f} MiB")
    del cache
    curve = {"sequential_steps": args.attn_steps, "latency_ms": [x * 1e3 for x in attn_lat], "rss_mib": [x / 2**20 for x in attn_rss]}
    return attn_caches, curve


def measure_ratios(sess_attn, sess_pom, attn_caches: dict, pom_states: dict, rng, args, out) -> tuple[list[dict], list[dict]]:
    """Attention vs PoM on the same step, interleaved (--ratio-steps), and the later single-step
    points of the attention curve (--curve-steps), each with a cache of that step's length."""
    ft = ARCH["frame_tokens"]
    points = sorted(set(args.ratio_steps) | {s for s in args.curve_steps if s > args.attn_steps})
    ratio_rows, curve_points = [], []
    for k in points:
        past_tokens = (k - 1) * ft
        # inputs + concatenated outputs + attention scores (heads x 256 x tokens, twice) + slack
        need = 2 * kv_cache_bytes(past_tokens) + 2 * HEADS * ft * (past_tokens + ft) * 4 + (1 << 30)
        if k - 1 not in attn_caches and C.mem_available_bytes() < need:
            msg = f"skipped: needs ~{need / 2**30:.1f} GiB, {C.mem_available_bytes() / 2**30:.1f} GiB available"
            out.print(f"step {k}: {msg}")
            ratio_rows.append({"step": k, "skipped": msg})
            continue
        synthetic = k - 1 not in attn_caches
        kv = attn_caches.pop(k - 1) if not synthetic else empty_cache(past_tokens, rng)
        x = random_frame(rng)
        contenders = {"attention": lambda kv=kv: sess_attn.run(None, {"tokens": x, **kv})}
        compare = k in args.ratio_steps and k - 1 in pom_states
        if compare:
            s = pom_states[k - 1]
            contenders["pom"] = lambda: sess_pom.run(None, {"tokens": x, **s})
        reps = 20 if k <= 20 else 9 if k <= 100 else 5 if k <= 300 else 3
        times = C.interleaved(contenders, reps=reps, warmup=1)
        row = {"step": k, "past_tokens": past_tokens, "cache_mib": kv_cache_bytes(past_tokens) / 2**20, "synthetic_cache": synthetic,
               "reps": reps, "attention_ms": C.median(times["attention"]) * 1e3}
        if compare:
            row["pom_ms"] = C.median(times["pom"]) * 1e3
            row["attention_over_pom"] = row["attention_ms"] / row["pom_ms"]
            ratio_rows.append(row)
        if synthetic or k in args.curve_steps:
            curve_points.append(row)
        out.print(f"step {k}: attention {C.ms(row['attention_ms'] / 1e3)} ms" + (f", PoM {C.ms(row['pom_ms'] / 1e3)} ms, ratio "
                  f"{row['attention_over_pom']:.1f}x" if compare else "") + (" (cache of random values)" if synthetic else ""))
        del kv, contenders, times
    return ratio_rows, curve_points


def tabulate_ratios(ratio_rows: list[dict], threads: int, out) -> None:
    """The per-step latency table of attention vs PoM (skipped steps say why)."""
    out.print(C.table(f"Per-step latency, onnxruntime CPU, {threads} threads, 256-token frames, batch 1 (interleaved medians)",
                      ["step", "past tokens", "KV cache MiB", "attention ms", "PoM ms", "attention / PoM", "cache"],
                      [[r["step"], r.get("past_tokens", "-"), f"{r['cache_mib']:.0f}" if "cache_mib" in r else "-",
                        C.ms(r["attention_ms"] / 1e3) if "attention_ms" in r else r.get("skipped"),
                        C.ms(r["pom_ms"] / 1e3) if "pom_ms" in r else "-",
                        f"{r['attention_over_pom']:.1f}x" if "attention_over_pom" in r else "-",
                        (("random, built for the step" if r.get("synthetic_cache") else "from the sequential run")
                         if "attention_ms" in r else "-")]
                       for r in ratio_rows]))


def measure_numerics(args, work: Path, out) -> tuple[dict, dict]:
    """How far the float32 running-mean state drifts from float64: the update formula alone, then a real step graph."""
    clock = time.perf_counter()
    running_mean = numerics_running_mean(args.numerics_steps)
    out.print(f"running_mean_update numerics ({args.numerics_steps} steps) in {time.perf_counter() - clock:.1f} s")
    graph_steps = min(args.numerics_steps, 100_000)
    return running_mean, numerics_step_graph(graph_steps, work, args.threads)


def tabulate_numerics(running_mean: dict, step_graph: dict, numerics_steps: int, out) -> None:
    """The final errors of the running-mean state vs its float64 reference, one row per check."""
    rows = []
    for name, r in running_mean.items():
        f = r["final"]
        rows.append([f"running_mean_update fp32, {name}", numerics_steps, f"{f['max_abs']:.2e}", f"{f['rel_to_max_abs_mean']:.2e}",
                     f"{f['max_per_channel_rel']:.2e}", f"{r['count']} / {r['count_expected']}"])
    g = step_graph
    rows.append(["step graph state path (small video_pom, layer 0)", g["steps"], f"{g['max_abs']:.2e}", f"{g['rel_to_max_abs_mean']:.2e}",
                 f"{g['max_per_channel_rel']:.2e}", f"{g['count']} / {g['count_expected']}"])
    out.print(C.table("Running-mean state vs float64 reference", ["check", "steps", "max abs err", "max err / max |mean|",
                                                                 "max per-channel rel err", "count / expected"], rows))


def evaluate_goals(results: dict, numerics_steps: int, out) -> dict:
    """Whether PoM streaming meets the flat-latency, flat-memory and numerics goals (docs/benchmarks.md)."""
    pom_summary = results["pom"]
    off = results["numerics_running_mean"]["offset"]["final"]
    g = results["numerics_step_graph"]
    goals = {
        "pom_late_over_early_le_1.05": {"met": pom_summary["late_over_early_sequential"] <= 1.05,
                                        "sequential": round(pom_summary["late_over_early_sequential"], 3),
                                        "interleaved": round(pom_summary["late_over_early_interleaved"], 3),
                                        "interleaved_aa_control": round(pom_summary["aa_control_interleaved"], 3)},
        "pom_memory_flat_after_warmup": {"met": pom_summary["rss_mib_growth_after_warmup"] <= 1.0,
                                         "growth_mib": round(pom_summary["rss_mib_growth_after_warmup"], 2),
                                         "range_mib": round(pom_summary["rss_mib_range_after_warmup"], 2)},
        "numerics_within_1e-5_relative": {"met": (off["rel_to_max_abs_mean"] <= 1e-5 and g["rel_to_max_abs_mean"] <= 1e-5)
                                          if numerics_steps >= 100_000 else None,
                                          "running_mean_offset": off["rel_to_max_abs_mean"], "step_graph": g["rel_to_max_abs_mean"],
                                          "steps": numerics_steps},
    }
    for name, gl in goals.items():
        verdict = "[yellow]NOT EVALUATED[/]" if gl["met"] is None else "[green]MET[/]" if gl["met"] else "[red]NOT MET[/]"
        out.print(f"goal {name}: {verdict} "
                  f"{ {k: v for k, v in gl.items() if k != 'met'} }")
    return goals


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    pom = results["pom_curve"]["latency_ms"]
    steps = range(1, len(pom) + 1)
    ax.plot(steps, pom, ".", ms=2, alpha=0.35, color="C0")
    k = 11
    rolling = [sorted(pom[max(0, i - k // 2): i + k // 2 + 1])[len(pom[max(0, i - k // 2): i + k // 2 + 1]) // 2] for i in range(len(pom))]
    ax.plot(steps, rolling, "-", color="C0", label="PoM (state: running mean, constant size), rolling median")
    attn = results["attention_curve"]["latency_ms"]
    ax.plot(range(1, len(attn) + 1), attn, "-", color="C3", label="attention + KV cache, sequential steps")
    pts = results["attention_curve"]["single_step_points"]
    if pts:
        ax.plot([p["step"] for p in pts], [p["attention_ms"] for p in pts], "o--", color="C3",
                label="attention, single step with a cache of that length")
    both = [r for r in results["ratios"] if "pom_ms" in r]
    if both:
        ax.plot([r["step"] for r in both], [r["pom_ms"] for r in both], "D", color="C0", mfc="none",
                label="PoM, same step timed interleaved with attention")
        ax.plot([r["step"] for r in both], [r["attention_ms"] for r in both], "D", color="C3", mfc="none",
                label="attention, same step timed interleaved with PoM")
        for r in both:
            ax.annotate(f"{r['attention_over_pom']:.1f}x", (r["step"], r["attention_ms"]), textcoords="offset points",
                        xytext=(-34, 4), fontsize=8, color="C3")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(0.8, 1500)
    ax.set_xlabel("step (one 256-token frame per step)")
    ax.set_ylabel("latency per step (ms)")
    ax.set_title("Per-step latency, onnxruntime CPU", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax2.plot(steps, results["pom_curve"]["rss_mib"], "-", color="C0", label="PoM")
    ax2.plot(range(1, len(attn) + 1), results["attention_curve"]["rss_mib"], "-", color="C3", label="attention + KV cache (sequential run)")
    ax2.set_xscale("log")
    ax2.set_xlabel("step")
    ax2.set_ylabel("process RSS (MiB)")
    ax2.set_title("Process memory (VmRSS) after each step", fontsize=10)
    ax2.grid(True, which="both", alpha=0.3)
    ax2.legend(fontsize=8)
    m, a = results["machine"], results["arch"]
    fig.suptitle(f"dim {a['dim']}, depth {a['depth']}, 256-token frames, batch 1, fp32; {m['threads']} threads ({m['cpu']}); "
                 f"onnxruntime {m['onnxruntime']}", fontsize=9)
    C.save_figure(fig, path)


if __name__ == "__main__":
    main()
