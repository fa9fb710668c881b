#!/usr/bin/env python
"""Load test: concurrent streams through a python-backend Triton repository on the bundled tritonserver.

Exports the zoo's ``video_pom`` (seed 0) as a step graph, writes a repository with
``pom-deploy triton-repo --backend python`` (oldest strategy), starts the serve extra's tritonserver
on 127.0.0.1 (free ports), and runs ``--streams`` sequences of ``--steps`` chunks of ``--chunk``
tokens each from ``--client-threads`` client threads (``pom_deploy.serving.loadtest``). Prints
requests/s, streamed tokens/s and latency percentiles per protocol, checks a few streams against
``StreamingSession`` on the same chunks, writes the numbers as JSON, and always stops the server.

    python scripts/bench_triton.py                      # 64 streams x 20 steps, gRPC and HTTP
    python scripts/bench_triton.py --streams 8 --steps 5 --protocol grpc   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--chunk", type=int, default=8, help="tokens per chunk (the video model's frame is 8)")
    parser.add_argument("--client-threads", type=int, default=64, help="client threads (default: one per stream)")
    parser.add_argument("--protocol", choices=("grpc", "http", "both"), default="both")
    parser.add_argument("--instances", type=int, default=1, help="model instances (python stubs)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads per instance")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--queue-delay-us", type=int, default=500)
    parser.add_argument("--timeout", type=float, default=60.0, help="client timeout per request, seconds")
    parser.add_argument("--json", type=Path, help="write the results here (default: a temp file, printed)")
    args = parser.parse_args()

    import pom_deploy
    from pom_deploy.models.zoo import create_zoo_model
    from pom_deploy.serving.loadtest import chunks_for, run_load
    from pom_deploy.serving.server import start_server
    from pom_deploy.serving.triton_config import RepoOptions
    from pom_deploy.serving.triton_repo import write_repository

    console = Console(width=150)
    work = Path(tempfile.mkdtemp(prefix="bench-triton-"))
    step_path = work / "video.step.onnx"
    pom_deploy.export_onnx(create_zoo_model("video_pom", seed=0), step_path, step=True)
    options = RepoOptions(name="video_step", instances=args.instances, threads=args.threads, max_batch=args.max_batch,
                          max_sequences=max(64, args.streams), queue_delay_us=args.queue_delay_us)
    write_repository(step_path, work / "repo", options)
    protocols = ["grpc", "http"] if args.protocol == "both" else [args.protocol]
    results = {}
    server = start_server(work / "repo")
    try:
        for number, protocol in enumerate(protocols):
            url = server.grpc_url if protocol == "grpc" else server.http_url
            load = run_load(url, "video_step", protocol=protocol, streams=args.streams, steps=args.steps, chunk_tokens=args.chunk,
                            threads=args.client_threads, timeout_s=args.timeout, keep_outputs=True,
                            first_sequence_id=1_000 + 100_000 * number)
            worst = 0.0
            for stream in range(min(4, args.streams)):
                session = pom_deploy.load(step_path, device="cpu")
                for chunk, served in zip(chunks_for(stream, args.steps, args.chunk, 16), load.outputs.get(stream, [])):
                    expected = session.step(chunk)
                    worst = max(worst, float(np.abs(served - expected).max() / max(1.0, np.abs(expected).max())))
            results[protocol] = {
                "requests": load.requests,
                "errors": len(load.errors),
                "retries": load.retries,
                "first_errors": load.errors[:3],
                "seconds": load.seconds,
                "requests_per_s": load.throughput,
                "tokens_per_s": load.throughput * args.chunk,
                "latency_ms": {f"p{q}": load.percentile(q) for q in (50, 90, 99)} | {"max": max(load.latencies_ms, default=float("nan"))},
                "max_rel_diff_vs_streaming_session": worst,
            }
    finally:
        server.stop()
        shutil.rmtree(work / "repo")
        step_path.unlink()

    table = Table(title=f"{args.streams} streams x {args.steps} chunks of {args.chunk} tokens, {args.client_threads} client threads, "
                        f"{args.instances} instance(s) x {args.threads} onnxruntime thread(s), max_batch {args.max_batch}")
    for column in ("protocol", "requests", "errors", "seconds", "requests/s", "tokens/s",
                   "p50 ms", "p90 ms", "p99 ms", "max ms", "max rel diff"):
        table.add_column(column, justify="right")
    for protocol, r in results.items():
        lat = r["latency_ms"]
        table.add_row(protocol, str(r["requests"]), str(r["errors"]), f"{r['seconds']:.2f}", f"{r['requests_per_s']:.0f}",
                      f"{r['tokens_per_s']:.0f}", f"{lat['p50']:.1f}", f"{lat['p90']:.1f}", f"{lat['p99']:.1f}", f"{lat['max']:.1f}",
                      f"{r['max_rel_diff_vs_streaming_session']:.1e}")
    console.print(table)
    for protocol, r in results.items():
        for error in r["first_errors"]:
            console.print(f"[red]{protocol} error:[/] {error}")
    record = {"args": vars(args) | {"json": None}, "results": results, "cpus": os.cpu_count(), "machine": platform.machine(),
              "load_average": os.getloadavg(), "numpy": np.__version__, "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    out = args.json or work / "bench_triton.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    console.print(f"JSON: {out}")


if __name__ == "__main__":
    main()
