"""``pom-deploy triton-repo`` and ``pom-deploy serve`` (registered by ``cli/deploy.py``)."""

from __future__ import annotations

import argparse
import signal
import time
from pathlib import Path

from ..serving.triton_config import BACKENDS, DEFAULT_MAX_BATCH, STRATEGIES, RepoOptions


def register(subparsers) -> None:
    repo = subparsers.add_parser(
        "triton-repo", help="write a Triton Inference Server model repository for an exported graph",
        description="Write REPO/NAME/config.pbtxt and REPO/NAME/1/<model file> for an ONNX graph or TensorRT engine "
                    "(full: dynamic batching; step: sequence batching with the state kept per stream). The config is "
                    "checked against Triton's schema and the model file before anything is written.",
    )
    repo.add_argument("model", type=Path, help="exported .onnx (full or --step) or TensorRT .engine")
    repo.add_argument("-o", "--output", type=Path, required=True, metavar="REPO", help="model repository folder (created or added to)")
    repo.add_argument("--backend", choices=BACKENDS, default="python",
                      help="python (runs anything pom_deploy.load opens; default), onnxruntime, or tensorrt (engines)")
    repo.add_argument("--name", default="pom", help="model name in the repository (default pom)")
    repo.add_argument("--instances", type=int, default=1, help="model instances per device (default 1)")
    repo.add_argument("--max-batch", type=int,
                      help=f"Triton max_batch_size (default min({DEFAULT_MAX_BATCH}, the export's max batch); 0: no batching)")
    repo.add_argument("--device", choices=("cpu", "gpu"), help="instance kind (default gpu for onnxruntime/tensorrt, cpu for python)")
    repo.add_argument("--strategy", choices=STRATEGIES, default="oldest", help="step graphs: sequence batcher strategy (default oldest)")
    repo.add_argument("--idle-timeout", type=float, default=10.0, metavar="S",
                      help="step graphs: drop a sequence idle this long (default 10 s)")
    repo.add_argument("--max-sequences", type=int, default=64,
                      help="step graphs, oldest strategy: sequences open at once per instance (default 64; more wait in Triton's backlog)")
    repo.add_argument("--queue-delay-us", type=int, default=500, help="how long the batcher waits to fill a batch (default 500)")
    repo.add_argument("--threads", type=int, default=1, help="python backend: onnxruntime threads per instance (default 1)")
    repo.add_argument("--max-chunk", type=int, metavar="TOKENS",
                      help="python step graphs: most tokens per request (default: the export profile's largest chunk)")
    repo.add_argument(
        "--plugin", metavar="LIB", help="tensorrt: the pom plugin library to ship with the engine (default: the one it was built with)"
    )
    repo.add_argument("--force", action="store_true", help="replace REPO/NAME if it exists")
    repo.set_defaults(func=run_triton_repo)

    serve = subparsers.add_parser(
        "serve", help="serve a python-backend repository with the bundled tritonserver (local try-out)",
        description="Start the tritonserver of the serve extra (nvidia-pytriton) on REPO, with this environment's Python "
                    "for the python backend, and run until Ctrl-C. It has the python backend only: models for other "
                    "backends in REPO are skipped (and named).",
    )
    serve.add_argument("repository", type=Path, help="model repository (pom-deploy triton-repo --backend python)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--http-port", type=int, default=8000, help="default 8000")
    serve.add_argument("--grpc-port", type=int, default=8001, help="default 8001")
    serve.add_argument("--exit-timeout", type=int, default=30, metavar="S",
                       help="on Ctrl-C, let open streams and requests finish for S seconds at most (default 30)")
    serve.add_argument("--verbose", type=int, default=0, help="tritonserver --log-verbose level")
    serve.set_defaults(func=run_serve)


def run_triton_repo(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..serving.triton_repo import write_repository

    options = RepoOptions(backend=args.backend, name=args.name, instances=args.instances, max_batch=args.max_batch,
                          device=args.device, strategy=args.strategy, idle_timeout_s=args.idle_timeout,
                          max_sequences=args.max_sequences, queue_delay_us=args.queue_delay_us, threads=args.threads,
                          max_chunk=args.max_chunk)
    result = write_repository(args.model, args.output, options, force=args.force, plugin=args.plugin)
    facts = result.summary
    Console().print(f"[green]wrote[/] {result.model_dir} ({args.backend}; max_batch_size {facts['max_batch_size']}, "
                    f"{facts['batching']} batching, {facts['states']} implicit states, {facts['instances']} instance(s)); "
                    f"see {result.model_dir / 'README.md'}")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..serving.server import start_server

    console = Console(stderr=True)
    # Ctrl-C and SIGTERM (a service manager's stop) stop the server gracefully, also when this process
    # was started with SIGINT ignored, as shells start background jobs (measured: the stop was lost).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with console.status(f"Starting tritonserver on {args.repository}"):
        server = start_server(args.repository, host=args.host, http_port=args.http_port, grpc_port=args.grpc_port,
                              exit_timeout_s=args.exit_timeout, verbose=args.verbose)
    try:
        for name, why in server.skipped.items():
            console.print(f"[yellow]skipped[/] {name}: {why}")
        console.print(f"[green]serving[/] {args.repository}: HTTP {server.http_url}, gRPC {server.grpc_url} (Ctrl-C stops it)")
        while server.alive():
            time.sleep(0.5)
        console.print(f"tritonserver exited with code {server.process.returncode}; log:\n{server.log()[-2000:]}")
        return 1
    except KeyboardInterrupt:
        console.print("stopping tritonserver")
        return 0
    finally:
        server.stop()
