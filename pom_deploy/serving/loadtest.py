"""Concurrent streams against a served step graph: what ``scripts/bench_triton.py`` measures and the tests bound.

Each stream is one Triton sequence; client threads take streams from a queue and send all their chunks in
order (start, middle, end), each with its step number (docs/serving.md: a retry is then answered, not applied
twice). Every request has a client timeout, so a stuck server ends the run with errors, not a hang; a timed-out
step is sent again once.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from .sequences import STEP_PARAMETER


@dataclass
class LoadResult:
    streams: int
    steps: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    retries: int = 0  # timed-out steps sent again
    outputs: dict[int, list[np.ndarray]] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        return len(self.latencies_ms)

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    @property
    def throughput(self) -> float:
        """Requests (chunks) answered per second."""
        return self.requests / self.seconds if self.seconds else 0.0


def make_client(protocol: str, url: str, timeout_s: float):
    """A tritonclient client and a function ``send(chunk, sequence_id, start, end) -> output``."""
    if protocol == "grpc":
        import tritonclient.grpc as client_module

        client = client_module.InferenceServerClient(url)
        extra = {"client_timeout": timeout_s}
    elif protocol == "http":
        import tritonclient.http as client_module

        client = client_module.InferenceServerClient(url, connection_timeout=timeout_s, network_timeout=timeout_s)
        extra = {}
    else:
        raise ValueError(f"protocol must be http or grpc, got {protocol!r}")

    def send(model: str, chunk: np.ndarray, sequence_id: int | str, start: bool, end: bool, step: int | None = None,
             input_name: str = "tokens", output_name: str = "output") -> np.ndarray:
        tensor = client_module.InferInput(input_name, list(chunk.shape), "FP32")
        tensor.set_data_from_numpy(chunk)
        if protocol == "grpc":
            sequence_id = grpc_sequence_id(sequence_id)
        parameters = {STEP_PARAMETER: step} if step is not None else None
        result = client.infer(model, [tensor], sequence_id=sequence_id, sequence_start=start, sequence_end=end,
                              parameters=parameters, **extra)
        return result.as_numpy(output_name)

    return client, send


def grpc_sequence_id(sequence_id: int | str) -> int | str:
    """A sequence id as tritonclient's gRPC client can send it. It writes integer ids into a signed 64-bit
    field and refuses ids >= 2**63; the server reads that field back as unsigned, so the id's two's
    complement reaches the model as the id itself (measured with tritonserver 2.51)."""
    if isinstance(sequence_id, int) and sequence_id >= 2**63:
        return sequence_id - 2**64
    return sequence_id


def run_load(url: str, model: str, *, protocol: str = "grpc", streams: int = 64, steps: int = 20, chunk_tokens: int = 8,
             features: int = 16, threads: int = 16, timeout_s: float = 30.0, first_sequence_id: int = 1_000,
             keep_outputs: bool = False, seed: int = 0, retries: int = 1) -> LoadResult:
    """``streams`` sequences of ``steps`` chunks each, sent by ``threads`` client threads; the chunks of
    stream ``s`` are ``chunks_for(s)`` so a caller can recompute what the server should answer."""
    todo: queue.Queue[int] = queue.Queue()
    for stream in range(streams):
        todo.put(stream)
    result = LoadResult(streams, steps, 0.0)
    lock = threading.Lock()

    def worker() -> None:
        _, send = make_client(protocol, url, timeout_s)
        while True:
            try:
                stream = todo.get_nowait()
            except queue.Empty:
                return
            outputs = []
            for step, chunk in enumerate(chunks_for(stream, steps, chunk_tokens, features, seed)):
                began = time.perf_counter()
                for attempt in range(1 + retries):
                    try:
                        out = send(model, chunk, first_sequence_id + stream, step == 0, step == steps - 1, step=step)
                        break
                    except Exception as exc:  # a load test counts failures, whatever they are
                        if attempt < retries and _timed_out(exc):  # the step number makes the retry safe
                            with lock:
                                result.retries += 1
                            continue
                        with lock:
                            result.errors.append(f"stream {stream} step {step}: {type(exc).__name__}: {exc}")
                        out = None
                        break
                if out is None:
                    break
                with lock:
                    result.latencies_ms.append(1000 * (time.perf_counter() - began))
                outputs.append(out)
            if keep_outputs:
                with lock:
                    result.outputs[stream] = outputs

    began = time.perf_counter()
    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    result.seconds = time.perf_counter() - began
    return result


def _timed_out(exc: Exception) -> bool:
    text = str(exc)
    return "Deadline Exceeded" in text or "DEADLINE_EXCEEDED" in text or "timed out" in text or "cancelled by the client" in text


def chunks_for(stream: int, steps: int, chunk_tokens: int, features: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng([seed, stream])
    return [rng.standard_normal((1, chunk_tokens, features)).astype(np.float32) for _ in range(steps)]
