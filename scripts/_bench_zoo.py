"""The zoo model's tables of ``bench_export.py``: ``video_pom`` as a full graph at a few N, and
its step graph per chunk (one frame fed with the state reached after some frames).

Contenders, interleaved in one process and compared by medians (``_bench_common``): PyTorch
eager, torch.compile, onnxruntime on the exporter's graph ("ort") and, when the PolyAggregate
custom-op library is given, onnxruntime on the graph exported with fused ops with the library
registered ("ort+kernel": each ``PolyAggregate`` node is one CPU kernel). The floor is the
model's own GEMM time: the per-run sum of the MatMul/Gemm kernels in an onnxruntime profile of
the ort+kernel session (of the ort session when there is no library; the GEMMs are the same).
"""

from __future__ import annotations

import time
from pathlib import Path

import _bench_common as C

ZOO = dict(in_dim=64, dim=512, depth=2, degree=3, expand=2, n_sel_heads=8, frame_tokens=256, mlp_ratio=4.0)
ZOO_TITLE = "video_pom zoo model (in_dim 64, dim 512, depth 2, degree 3, expand 2, 8 sel heads, 256-token frames, mlp 4x)"


def make_model():
    from pom_deploy.models.zoo import create_zoo_model

    return create_zoo_model("video_pom", **ZOO).eval()  # seeded: the same weights at every call


def export_pair(model, stem: str, work: Path, lib: Path | None, out, step: bool) -> tuple[Path, Path | None, list]:
    """The exporter's graph and, with a library, the graph exported with fused ops (both verified);
    (plain path, fused path or None, the PoM layers the fused op does not cover)."""
    from pom_deploy import export_onnx

    clock = time.perf_counter()
    plain = work / f"{stem}.onnx"
    export_onnx(model, plain, step=step, force=True)
    fused, decomposed = None, []
    if lib is not None:
        fused = work / f"{stem}_fused.onnx"
        decomposed = export_onnx(model, fused, step=step, fused_ops=True, force=True).spec.decomposed_layers
    params = sum(p.numel() for p in model.parameters()) / 1e6
    out.print(f"exported {stem} ({params:.1f} M params{', and with fused ops' if fused else ''}) in "
              f"{time.perf_counter() - clock:.1f} s" + (f"; layers left decomposed: {decomposed}" if decomposed else ""))
    return plain, fused, decomposed


def try_compile(module, args):
    """torch.compile(module, dynamic=False) (compiled at its first call), or None and why not."""
    if args.no_compile:
        return None, "--no-compile"
    import torch
    import torch._dynamo

    torch._dynamo.config.cache_size_limit = 32
    return torch.compile(module, dynamic=False), None


def _error(exc: Exception) -> str:
    from pom_deploy.errors import first_line

    return f"{type(exc).__name__}: {first_line(exc)}"


def measure(label: str, eager, compiled, sessions: dict, feeds: dict, expected: list, reps: int, floor_graph: tuple,
            args, runs: int, prefix: str, out) -> dict:
    """One row: ``eager()``, ``compiled()`` (None: not run) and the onnxruntime ``sessions``
    ({"ort": ..., "ort_kernel": ...}) timed interleaved on ``feeds``; each session's outputs
    checked against ``expected`` (eager's, in the graph's output order); the GEMM floor from a
    profile of ``floor_graph`` = (path, custom-op library or None), which must show the
    PolyAggregate kernel when a library is given."""
    import numpy as np

    diffs = {name: max(float(np.abs(np.asarray(got, np.float64) - want).max()) for got, want in zip(s.run(None, feeds), expected))
             for name, s in sessions.items()}
    compile_s, compile_error = None, None
    if compiled is not None:
        clock = time.perf_counter()
        try:
            compiled()
            compile_s = time.perf_counter() - clock
        except Exception as exc:  # torch.compile failing to compile this graph is a result
            compile_error, compiled = _error(exc), None
            out.print(f"  [yellow]{label}: torch.compile failed:[/] {compile_error}")
    contenders = {"eager": eager, **{name: (lambda s=s: s.run(None, feeds)) for name, s in sessions.items()}}
    if compiled is not None:
        contenders["compile"] = compiled
    med = {k: C.median(v) for k, v in C.interleaved(contenders, reps=reps, warmup=1).items()}
    path, lib = floor_graph
    per_run = C.ort_profile_per_run(path, args.threads, feeds, runs, prefix, custom_ops_library=lib)
    if lib is not None:
        C.require_kernel(per_run, f"{label} ({path.name})")
    floor = C.gemm_seconds(per_run)
    out.print(f"  {label}: " + ", ".join(f"{k} {C.ms(v)} ms" for k, v in med.items()) + f", GEMM floor {C.ms(floor)} ms; max |diff| vs "
              "eager " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
    return {"median_s": med, "reps": reps, "max_abs_diff_ort_vs_eager": diffs["ort"],
            "max_abs_diff_ort_kernel_vs_eager": diffs.get("ort_kernel"), "compile_seconds": compile_s, "compile_error": compile_error,
            "gemm_floor_s": floor, "floor_profile": {"graph": "ort_kernel" if lib is not None else "ort", "runs": runs,
                                                     "per_run_s": per_run},
            "ort_speedup_vs_eager": med["eager"] / med["ort"],
            "ort_speedup_vs_compile": C.ratio(med.get("compile"), med["ort"]),  # = compile / ort (the old key)
            "compile_over_ort_kernel": C.ratio(med.get("compile"), med.get("ort_kernel")),
            "ort_over_floor": med["ort"] / floor, "ort_kernel_over_floor": C.ratio(med.get("ort_kernel"), floor)}


def _sessions(plain: Path, fused: Path | None, lib: Path | None, threads: int) -> dict:
    sessions = {"ort": C.ort_session(plain, threads)}
    if fused is not None:
        sessions["ort_kernel"] = C.ort_session(fused, threads, custom_ops_library=lib)
    return sessions


def measure_zoo(settings, args, lib: Path | None, work: Path, out) -> list[dict]:
    """The full block-causal graph at each N of ``settings["zoo_n"]``."""
    import torch

    model = make_model()
    plain, fused, decomposed = export_pair(model, "video_pom", work, lib, out, step=False)
    sessions = _sessions(plain, fused, lib, args.threads)
    compiled, compile_error = try_compile(model, args)
    rows = []
    for n in settings["zoo_n"]:
        x = torch.randn(1, n, ZOO["in_dim"], generator=torch.Generator().manual_seed(n))
        with torch.inference_mode():
            row = measure(f"video_pom N={n}", lambda: model(x), (lambda: compiled(x)) if compiled is not None else None, sessions,
                          {"tokens": x.numpy()}, [model(x).numpy()], settings["zoo_reps"][n], (fused or plain, lib), args,
                          settings["floor_runs"], str(work / f"ort_profile_zoo_n{n}"), out)
        rows.append({"n": n, **row, "compile_error": compile_error or row["compile_error"], "decomposed_layers": decomposed})
    return rows


def step_module(model):
    """The module the exporter traces for the step graph (``StepGraph``: the model's forward with
    every PoM layer running ``state_forward`` on explicit state): (module, its state input names
    in order, the PoM layers)."""
    import torch

    from pom_deploy.exporters.graphs import StepGraph
    from pom_deploy.exporters.model_configs import resolve

    config, target = resolve(model)
    builder = StepGraph(target, config, torch.float32)
    return builder.module().eval(), builder.input_names[len(builder.data_names):], builder.layers


def measure_step(settings, args, lib: Path | None, work: Path, out) -> list[dict]:
    """The step graph on one chunk of ``ZOO["frame_tokens"]`` tokens (batch 1) fed with the state
    reached after ``settings["step_after"]`` random chunks (stepped in eager PyTorch)."""
    import torch

    model = make_model()
    plain, fused, decomposed = export_pair(model, "video_pom_step", work, lib, out, step=True)
    sessions = _sessions(plain, fused, lib, args.threads)
    step, state_names, layers = step_module(model)
    compiled, compile_error = try_compile(step, args)
    chunk, after = ZOO["frame_tokens"], settings["step_after"]
    gen = torch.Generator().manual_seed(chunk)
    with torch.inference_mode():
        past = [t for layer in layers for t in (torch.zeros(1, 1, layer.state_channels), torch.zeros(1, dtype=torch.int64))]
        for _ in range(after):
            past = list(step(torch.randn(1, chunk, ZOO["in_dim"], generator=gen), *past)[1:])
        x = torch.randn(1, chunk, ZOO["in_dim"], generator=gen)
        feeds = {"tokens": x.numpy(), **{name: t.numpy() for name, t in zip(state_names, past)}}
        expected = [t.numpy() for t in step(x, *past)]
        row = measure(f"video_pom step, chunk {chunk} after {after * chunk} tokens", lambda: step(x, *past),
                      (lambda: compiled(x, *past)) if compiled is not None else None, sessions, feeds, expected, settings["step_reps"],
                      (fused or plain, lib), args, settings["floor_runs"], str(work / "ort_profile_step"), out)
    return [{"chunk": chunk, "tokens_before": after * chunk, **row, "compile_error": compile_error or row["compile_error"],
             "decomposed_layers": decomposed}]


def tabulate(rows: list[dict], title: str, first: tuple[str, str], out) -> None:
    """The zoo/step table: ``first`` = (column name, row key)."""
    def compile_cell(r):
        if "compile" in r["median_s"]:
            return C.ms(r["median_s"]["compile"])
        return "-" if r["compile_error"] in (None, "--no-compile") else "failed"

    source = rows[0]["floor_profile"]["graph"] if rows else "ort_kernel"
    cols = [first[0], "eager ms", "compile ms", "ort ms", "ort+kernel ms", "GEMM floor ms (profile)", "ort vs eager", "compile / ort",
            "compile / ort+kernel", "ort / floor", "ort+kernel / floor"]
    out.print(C.table(f"{title}; medians; floor: MatMul/Gemm kernel time per run in a profile of the "
                      f"{'ort+kernel' if source == 'ort_kernel' else 'ort (no kernel library)'} session",
                      cols, [[r[first[1]], C.ms(r["median_s"]["eager"]), compile_cell(r), C.ms(r["median_s"]["ort"]),
                              C.ms_or_na(r["median_s"].get("ort_kernel")), C.ms(r["gemm_floor_s"]),
                              C.times_str(r["ort_speedup_vs_eager"]), C.times_str(r["ort_speedup_vs_compile"]),
                              C.times_str(r["compile_over_ort_kernel"]), C.times_str(r["ort_over_floor"]),
                              C.times_str(r["ort_kernel_over_floor"])] for r in rows]))
    failed = {r["compile_error"] for r in rows if r["compile_error"] not in (None, "--no-compile")}
    for error in failed:
        out.print(f"  torch.compile failed: {error}")


def tabulate_zoo(rows: list[dict], out) -> None:
    tabulate(rows, f"{ZOO_TITLE}, full block-causal graph, batch 1", ("N", "n"), out)


def tabulate_step(rows: list[dict], out) -> None:
    after = rows[0]["tokens_before"] if rows else 0
    tabulate(rows, f"{ZOO_TITLE}, step graph per chunk (one frame) after {after} tokens, batch 1", ("chunk", "chunk"), out)
