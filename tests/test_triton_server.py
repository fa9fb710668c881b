"""A python-backend repository served by a real tritonserver (the serve extra's nvidia-pytriton, 2.51) on
127.0.0.1: interleaved streams over HTTP and gRPC equal StreamingSession, bad requests fail alone, a
bounded load test, and a server stopped mid-stream. One server for the module (stopped in a finally),
plus one `pom-deploy serve` process for the stop test; onnxruntime runs one thread per model instance.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc", reason="the serve extra (tritonclient) is not installed")

import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

import pom_deploy
from pom_deploy.serving import ServingError
from pom_deploy.serving.loadtest import chunks_for, make_client, run_load
from pom_deploy.serving.server import find_bundled_server, free_port, start_server
from pom_deploy.serving.triton_config import RepoOptions
from pom_deploy.serving.triton_repo import write_repository

try:
    find_bundled_server()
except ServingError as exc:
    pytest.skip(str(exc), allow_module_level=True)

EPS32 = float(np.finfo(np.float32).eps)
# Triton may run requests of several streams as one batch, and the reference runs each stream alone:
# onnxruntime may then reduce in another order. Two orders of a float32 sum of K terms differ by at most
# about K*eps times the sum of the terms' magnitudes; K <= 64 in this model (its widest matmul and its
# channel count), with 2 PoM layers and 2 chained reductions in each: 4*K*eps, times 4 for the output
# projection and margin, relative to the output's largest magnitude. Unbatched runs are bit-identical.
RTOL_REORDER = 16 * 64 * EPS32
CLIENT_TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def served(tmp_path_factory, exported_video):
    full, step = exported_video
    repo = tmp_path_factory.mktemp("triton") / "repo"
    # 20 ms batching window: concurrent streams of equal chunk shapes run as one batch
    write_repository(step.path, repo, RepoOptions(name="video_step", max_batch=8, max_sequences=64, queue_delay_us=20_000))
    write_repository(full.path, repo, RepoOptions(name="video", max_batch=8))
    server = start_server(repo, exit_timeout_s=5)  # a stream left open by a failed test delays the stop 5 s at most
    try:
        yield server, step.path, full.path
    finally:
        server.stop()
        assert not server.alive()


def reference_stream(step_path, chunks):
    session = pom_deploy.load(step_path, device="cpu")
    return [session.step(chunk) for chunk in chunks]


def assert_close(actual, expected):
    scale = max(1.0, float(np.abs(expected).max()))
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    assert float(np.abs(actual - expected).max()) <= RTOL_REORDER * scale


def test_interleaved_streams_over_http_and_grpc_equal_streaming_session(served):
    server, step_path, _ = served
    rng = np.random.default_rng(7)
    sizes = {201: [8, 3, 16, 1, 5], 202: [8, 1, 16, 24, 5], 203: [1, 3, 2, 24, 8],  # HTTP
             204: [8, 3, 16, 1, 5], 205: [2, 9, 16, 1, 5], 206: [8, 8, 8, 8, 8]}     # gRPC
    chunks = {sid: [rng.standard_normal((1, n, 16)).astype(np.float32) for n in ns] for sid, ns in sizes.items()}
    results = {sid: [] for sid in sizes}
    failures: list[str] = []
    steps = len(next(iter(sizes.values())))
    barrier = threading.Barrier(len(sizes) + 1, timeout=CLIENT_TIMEOUT_S)

    def stream(sid: int) -> None:
        _, send = make_client("http" if sid <= 203 else "grpc", server.http_url if sid <= 203 else server.grpc_url, CLIENT_TIMEOUT_S)
        for number, chunk in enumerate(chunks[sid]):
            barrier.wait()  # every stream sends its next chunk at once: interleaved, and batched where shapes agree
            try:
                results[sid].append(send("video_step", chunk, sid, number == 0, number == steps - 1))
            except Exception as exc:
                failures.append(f"{sid}: {exc}")

    def malformed() -> list[str]:
        """Bad requests sent while the streams run: each must fail, alone."""
        errors = []
        http = httpclient.InferenceServerClient(server.http_url, network_timeout=CLIENT_TIMEOUT_S)
        grpc = grpcclient.InferenceServerClient(server.grpc_url)
        wrong_dim = grpcclient.InferInput("tokens", [1, 4, 17], "FP32")
        wrong_dim.set_data_from_numpy(np.zeros((1, 4, 17), np.float32))
        wrong_type = httpclient.InferInput("tokens", [1, 4, 16], "FP64")
        wrong_type.set_data_from_numpy(np.zeros((1, 4, 16), np.float64))
        never_started = httpclient.InferInput("tokens", [1, 4, 16], "FP32")
        never_started.set_data_from_numpy(np.zeros((1, 4, 16), np.float32))
        for call in (lambda: grpc.infer("video_step", [wrong_dim], sequence_id=299, sequence_start=True, client_timeout=CLIENT_TIMEOUT_S),
                     lambda: http.infer("video_step", [wrong_type], sequence_id=298, sequence_start=True),
                     lambda: http.infer("video_step", [never_started], sequence_id=297)):
            try:
                call()
                errors.append("accepted")
            except InferenceServerException as exc:
                errors.append(str(exc))
        return errors

    threads = [threading.Thread(target=stream, args=(sid,), daemon=True) for sid in sizes]
    for thread in threads:
        thread.start()
    bad = []
    for number in range(steps):
        barrier.wait()
        if number == 2:
            bad = malformed()
    for thread in threads:
        thread.join(CLIENT_TIMEOUT_S)
    assert not failures and not any(t.is_alive() for t in threads)
    assert len(bad) == 3 and "accepted" not in bad, bad
    assert "17" in bad[0] and "FP64" in bad[1], bad
    for sid, expected in ((sid, reference_stream(step_path, chunks[sid])) for sid in sizes):
        assert len(results[sid]) == steps
        for actual, reference in zip(results[sid], expected):
            assert_close(actual, reference)


def test_full_graph_over_http_equals_session(served):
    server, _, full_path = served
    tokens = np.random.default_rng(3).standard_normal((2, 24, 16)).astype(np.float32)
    client = httpclient.InferenceServerClient(server.http_url, network_timeout=CLIENT_TIMEOUT_S)
    tensor = httpclient.InferInput("tokens", list(tokens.shape), "FP32")
    tensor.set_data_from_numpy(tokens)
    actual = client.infer("video", [tensor]).as_numpy("output")
    assert_close(actual, pom_deploy.load(full_path, device="cpu").run(tokens=tokens)["output"])


def test_bounded_load_has_no_errors_and_batches_streams(served):
    server, step_path, _ = served
    stats_before = _counts(server)
    result = run_load(server.grpc_url, "video_step", streams=16, steps=5, threads=8, timeout_s=CLIENT_TIMEOUT_S,
                      keep_outputs=True, first_sequence_id=5_000)
    assert result.errors == [] and result.requests == 16 * 5
    assert result.seconds < 60
    inferences, executions = (a - b for a, b in zip(_counts(server), stats_before))
    assert inferences == 80 and executions < inferences  # some requests of different streams ran as one batch
    for stream in (0, 7, 15):
        expected = reference_stream(step_path, chunks_for(stream, 5, 8, 16))
        for actual, reference in zip(result.outputs[stream], expected):
            assert_close(actual, reference)


def _counts(server) -> tuple[int, int]:
    stats = grpcclient.InferenceServerClient(server.grpc_url).get_inference_statistics("video_step", as_json=True)
    model = stats["model_stats"][0]
    return int(model.get("inference_count", 0)), int(model.get("execution_count", 0))


def test_server_stopped_mid_stream_gives_the_client_an_error_not_a_hang(tmp_path, exported_video):
    """`pom-deploy serve` (its own process group); Ctrl-C mid-stream: Triton lets the open stream go on
    for --exit-timeout seconds, then exits, and the streaming client gets errors."""
    _, step = exported_video
    repo = tmp_path / "repo"
    write_repository(step.path, repo, RepoOptions(name="video_step"))
    http_port, grpc_port = free_port(), free_port()
    process = subprocess.Popen([sys.executable, "-m", "pom_deploy.cli.deploy", "serve", str(repo), "--http-port", str(http_port),
                                "--grpc-port", str(grpc_port), "--exit-timeout", "2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        _, send = make_client("grpc", f"127.0.0.1:{grpc_port}", 10.0)
        deadline = time.monotonic() + 120
        chunk = np.ones((1, 8, 16), np.float32)
        while True:
            try:
                send("video_step", chunk, 1, True, False)
                break
            except InferenceServerException:
                assert process.poll() is None and time.monotonic() < deadline, "pom-deploy serve did not come up"
                time.sleep(0.5)
        outcome: dict[str, object] = {}

        def keep_streaming() -> None:
            try:
                for _ in range(100_000):
                    send("video_step", chunk, 1, False, False)
            except InferenceServerException as exc:
                outcome["error"] = exc

        client = threading.Thread(target=keep_streaming, daemon=True)
        client.start()
        time.sleep(0.5)
        os.killpg(process.pid, signal.SIGINT)
        client.join(30)
        assert not client.is_alive(), "the client hangs after the server stopped"
        assert isinstance(outcome.get("error"), InferenceServerException)
        assert process.wait(60) == 0, process.stdout.read().decode(errors="replace")
    finally:
        # SIGTERM first: `serve` then stops tritonserver's whole process group, python stubs included
        # (a SIGKILL of `serve` alone ends tritonserver through its parent-death signal, not its stubs).
        for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, None)):
            try:
                os.killpg(process.pid, sig)
                process.wait(wait_s)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        process.wait()
