"""A python-backend repository served by a real tritonserver (the serve extra's nvidia-pytriton, 2.51) on
127.0.0.1: interleaved streams over HTTP and gRPC equal StreamingSession, bad requests fail alone, string
and large integer sequence ids, step numbers and retries, admitted STARTs beyond the slots, a bounded load
test, and a server stopped mid-stream. One server for the module (stopped in a finally), plus one
`pom-deploy serve` process for the stop test; onnxruntime runs one thread per model instance.
"""

from __future__ import annotations

import os
import re
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
MAX_CHUNK = 32


@pytest.fixture(scope="module")
def served(tmp_path_factory, exported_video):
    full, step = exported_video
    repo = tmp_path_factory.mktemp("triton") / "repo"
    # 20 ms batching window: concurrent streams of equal chunk shapes run as one batch
    write_repository(step.path, repo, RepoOptions(name="video_step", max_batch=8, max_sequences=64, queue_delay_us=20_000,
                                                  max_chunk=MAX_CHUNK))
    write_repository(full.path, repo, RepoOptions(name="video", max_batch=8))
    write_repository(step.path, repo, RepoOptions(name="video_ort", backend="onnxruntime", device="cpu"))  # not in the wheel
    server = start_server(repo, exit_timeout_s=5)  # a stream left open by a failed test delays the stop 5 s at most
    try:
        assert set(server.skipped) == {"video_ort"}  # skipped, and the python models serve (issue 28)
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
    # unequal chunks of whole 8-token frames (the video model streams frame-causally: a split frame is refused)
    sizes = {201: [8, 24, 16, 8, 32], 202: [8, 8, 16, 24, 32], 203: [8, 24, 16, 24, 8],  # HTTP
             204: [8, 24, 16, 8, 32], 205: [16, 32, 16, 8, 24], 206: [8, 8, 8, 8, 8]}     # gRPC (at most MAX_CHUNK)
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
        never_started = httpclient.InferInput("tokens", [1, 8, 16], "FP32")
        never_started.set_data_from_numpy(np.zeros((1, 8, 16), np.float32))
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


def test_string_and_large_integer_ids_are_separate_streams_over_http_and_grpc(served):
    """Ids that share their first 8 serialized bytes ("cam-1"/"cam-2": 4 length bytes and "cam-"), an
    integer and a string of one spelling, and integer ids >= 2**63, stepped interleaved; each step of each
    stream alternates between HTTP and gRPC, so one id names one stream over both protocols."""
    server, step_path, _ = served
    ids = ["cam-1", "cam-2", "stream_000001", "stream_000002", 424242, "424242", 2**64 - 1, 2**64 - 2]
    steps = 4
    rng = np.random.default_rng(11)
    chunks = {sid: [rng.standard_normal((1, 8, 16)).astype(np.float32) for _ in range(steps)] for sid in ids}
    http = make_client("http", server.http_url, CLIENT_TIMEOUT_S)[1]
    grpc = make_client("grpc", server.grpc_url, CLIENT_TIMEOUT_S)[1]
    results = {sid: [] for sid in ids}
    for number in range(steps):
        for position, sid in enumerate(ids):
            last = steps - 1 - (position % 2)  # "cam-1" ends a step before "cam-2" and goes on no longer
            if number <= last:
                send = http if (number + position) % 2 == 0 else grpc
                results[sid].append(send("video_step", chunks[sid][number], sid, number == 0, number == last))
    for position, sid in enumerate(ids):
        expected = reference_stream(step_path, chunks[sid][:steps - position % 2])
        assert len(results[sid]) == len(expected)
        for actual, reference in zip(results[sid], expected):
            assert_close(actual, reference)
    with pytest.raises(ValueError):  # tritonclient's gRPC client itself: hence grpc_sequence_id
        grpcclient.InferenceServerClient(server.grpc_url).infer("video_step", [_tokens(grpcclient, np.ones((1, 1, 16), np.float32))],
                                                              sequence_id=2**64 - 1, sequence_start=True)


def _tokens(module, chunk):
    tensor = module.InferInput("tokens", list(chunk.shape), "FP32")
    tensor.set_data_from_numpy(chunk)
    return tensor


def test_empty_and_oversized_chunks_are_refused_alone_and_leave_the_stream_untouched(served):
    server, step_path, _ = served
    rng = np.random.default_rng(5)
    chunks = [rng.standard_normal((1, n, 16)).astype(np.float32) for n in (8, 24, 16)]
    for protocol, url, sid in (("http", server.http_url, 601), ("grpc", server.grpc_url, 602)):
        send = make_client(protocol, url, CLIENT_TIMEOUT_S)[1]
        outputs = [send("video_step", chunks[0], sid, True, False)]
        for bad, message in (
            (np.zeros((1, 0, 16), np.float32), "a chunk needs at least one token"),
            (np.ones((1, 12, 16), np.float32), "a chunk of 12 tokens splits a frame: this model streams whole frames of 8"),
            (np.ones((1, MAX_CHUNK + 1, 16), np.float32), f"more than this model takes in one request ({MAX_CHUNK}"),
        ):
            with pytest.raises(InferenceServerException, match=re.escape(message)):
                send("video_step", bad, sid, False, False)
        outputs += [send("video_step", chunks[1], sid, False, False), send("video_step", chunks[2], sid, False, True)]
        for actual, reference in zip(outputs, reference_stream(step_path, chunks)):
            assert np.isfinite(actual).all()
            assert_close(actual, reference)
        with pytest.raises(InferenceServerException, match="a chunk needs at least one token"):  # also as a START
            send("video_step", np.zeros((1, 0, 16), np.float32), sid + 10, True, True)


def test_a_timed_out_or_repeated_step_is_applied_once_and_gaps_and_second_writers_are_refused(served):
    """gRPC: the client times out while the step waits in the batcher (20 ms window); the model sees the
    request cancelled and does not commit it. HTTP: the client gives up but the server is not told, so the
    step is applied; its retry (same step number) is answered from the stored result, not applied again."""
    server, step_path, _ = served
    rng = np.random.default_rng(9)
    chunks = [rng.standard_normal((1, 8, 16)).astype(np.float32) for _ in range(4)]
    expected = reference_stream(step_path, chunks)
    for protocol, url, sid in (("grpc", server.grpc_url, 701), ("http", server.http_url, 702)):
        send = make_client(protocol, url, CLIENT_TIMEOUT_S)[1]
        impatient = make_client(protocol, url, 0.005)[1]
        outputs = [send("video_step", chunks[0], sid, True, False, step=0)]
        with pytest.raises(Exception, match="(?i)deadline|timed out"):
            impatient("video_step", chunks[1], sid, False, False, step=1)
        time.sleep(0.5)  # the abandoned request has run (or been dropped) by now
        outputs.append(send("video_step", chunks[1], sid, False, False, step=1))  # the retry
        assert_close(send("video_step", chunks[1], sid, False, False, step=1), outputs[-1])  # a lost answer, asked again
        with pytest.raises(InferenceServerException, match="step 3 of sequence .* out of order: the next step is 2"):
            send("video_step", chunks[3], sid, False, False, step=3)
        outputs.append(send("video_step", chunks[2], sid, False, False, step=2))
        with pytest.raises(InferenceServerException, match="already applied with other inputs: is another client"):
            send("video_step", chunks[3], sid, False, False, step=2)  # a second client stepping this id
        outputs.append(send("video_step", chunks[3], sid, False, True, step=3))
        for actual, reference in zip(outputs, expected):
            assert_close(actual, reference)


def test_a_second_start_on_a_live_id_restarts_the_stream(served):
    """Triton hands a START for an open id to the model as a START: the stream begins again (documented)."""
    server, step_path, _ = served
    rng = np.random.default_rng(13)
    chunks = [rng.standard_normal((1, 8, 16)).astype(np.float32) for _ in range(2)]
    send = make_client("grpc", server.grpc_url, CLIENT_TIMEOUT_S)[1]
    send("video_step", chunks[0], 801, True, False)
    restarted = send("video_step", chunks[1], 801, True, True)
    assert_close(restarted, reference_stream(step_path, chunks[1:])[0])


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


@pytest.fixture(scope="module")
def cli_server(tmp_path_factory, exported_video):
    """`pom-deploy serve` (its own process group) on a repository with 2 sequence slots, a 1 s idle timeout,
    and an onnxruntime model the bundled server cannot run (the docs' recipe); the stop test ends it."""
    _, step = exported_video
    repo = tmp_path_factory.mktemp("cli") / "repo"
    write_repository(step.path, repo, RepoOptions(name="video_step", max_batch=8, max_sequences=2, idle_timeout_s=1.0,
                                                  queue_delay_us=20_000))
    write_repository(step.path, repo, RepoOptions(name="video_ort", backend="onnxruntime", device="cpu"))
    http_port, grpc_port = free_port(), free_port()
    process = subprocess.Popen([sys.executable, "-m", "pom_deploy.cli.deploy", "serve", str(repo), "--http-port", str(http_port),
                                "--grpc-port", str(grpc_port), "--exit-timeout", "2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not _ready(http_port):
            assert process.poll() is None and time.monotonic() < deadline, "pom-deploy serve did not come up"
            time.sleep(0.5)
        yield process, f"127.0.0.1:{grpc_port}", step.path
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


def _ready(http_port: int) -> bool:
    try:
        return httpclient.InferenceServerClient(f"127.0.0.1:{http_port}").is_server_ready()
    except Exception:  # not listening yet
        return False


def test_starts_admitted_from_the_backlog_are_never_refused(cli_server):
    """2 slots: two idle streams hold them; two more STARTs wait in Triton's backlog until Triton times
    the idle ones out (1 s), and are then admitted. The model must take them and their later steps."""
    _, grpc_url, step_path = cli_server
    send = make_client("grpc", grpc_url, CLIENT_TIMEOUT_S)[1]
    rng = np.random.default_rng(17)
    chunks = [rng.standard_normal((1, 8, 16)).astype(np.float32) for _ in range(3)]
    for sid in (901, 902):
        send("video_step", chunks[0], sid, True, False)  # left open: Triton times them out
    time.sleep(0.5)  # Triton ages a START from its arrival: one that waited past the idle timeout would be timed out in turn
    results, failures = {}, []

    def stream(sid: int) -> None:
        try:
            results[sid] = [send("video_step", chunk, sid, number == 0, number == 2) for number, chunk in enumerate(chunks)]
        except InferenceServerException as exc:
            failures.append(f"{sid}: {exc}")

    waiting = [threading.Thread(target=stream, args=(sid,), daemon=True) for sid in (903, 904)]
    for thread in waiting:
        thread.start()
    for thread in waiting:
        thread.join(CLIENT_TIMEOUT_S)
    assert not failures and len(results) == 2, failures
    for outputs in results.values():
        for actual, reference in zip(outputs, reference_stream(step_path, chunks)):
            assert_close(actual, reference)


def test_server_stopped_mid_stream_gives_the_client_an_error_not_a_hang(cli_server):
    """Ctrl-C mid-stream: Triton lets the open stream go on for --exit-timeout seconds, then exits, and the
    streaming client gets errors. `serve` named the model it skipped."""
    process, grpc_url, _ = cli_server
    _, send = make_client("grpc", grpc_url, 10.0)
    chunk = np.ones((1, 8, 16), np.float32)
    send("video_step", chunk, 1, True, False)
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
    assert "skipped video_ort: onnxruntime backend" in process.stdout.read().decode(errors="replace")
