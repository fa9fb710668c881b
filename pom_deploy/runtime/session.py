"""Sessions: the same API over every backend, for full graphs and for step graphs."""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..digests import tensors_sha256
from ..errors import PomDeployWarning, RuntimeInputError, first_line
from ..outputs import atomic_output
from ..spec import GraphSpec, TensorSpec
from .base import Backend, check_feed, check_whole_frames, chunk_multiple

STATE_FINGERPRINT_KEY = "__pom_deploy_model__"
STATE_DIGEST_KEY = "__pom_deploy_state_sha256__"  # in state files: the digest of every other array


class Session:
    """A full graph: ``run(**inputs) -> {output name: array}``, inputs checked first."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self.spec: GraphSpec | None = backend.spec

    @property
    def inputs(self) -> list[TensorSpec]:
        return self.spec.inputs if self.spec else self.backend.input_specs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self.spec.outputs if self.spec else self.backend.output_specs

    def run(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        _check_inputs(self.inputs, inputs, self.spec.dim_multiples if self.spec else {})
        return self.backend.run(inputs)


class StreamingSession:
    """A step graph with its state carried between calls.

    ``step(chunk, **extra)`` feeds the next chunk of every stream in the batch (one row per
    stream) and returns the chunk's output. ``state`` can be read and assigned to save and
    resume streams; ``reset()`` starts all streams, or one row, afresh.
    """

    def __init__(self, backend: Backend | str | Path, device: str | None = None, **options):
        if isinstance(backend, (str, Path)):  # a file, opened as pom_deploy.load opens it
            from . import open_backend

            backend = open_backend(backend, device, **options)
        elif not isinstance(backend, Backend):
            raise RuntimeInputError(f"StreamingSession takes a step graph's path or a backend, not {type(backend).__name__}; "
                                    "pom_deploy.load(path) opens any exported file")
        spec = backend.spec
        if spec is None or spec.kind != "step":
            raise RuntimeInputError(f"{getattr(backend, 'path', 'this graph')} is not a pom-deploy step graph (export it with --step)")
        self.backend, self.spec = backend, spec
        self.chunk_input = spec.data_inputs[0]
        self.chunk_multiple = chunk_multiple(spec)
        self.output_name = spec.outputs[0].name
        self._state: dict[str, Any] | None = None
        self.batch: int | None = None

    # -- state -------------------------------------------------------------------------

    @property
    def tokens_seen(self) -> np.ndarray:
        """Tokens consumed so far by each stream (batch row)."""
        if self._state is None:
            return np.zeros((0,), np.int64)
        return _host(self._state[self.spec.state[0].past_count]).reshape(-1)

    @property
    def state(self) -> dict[str, np.ndarray]:
        """A host copy of the state, tagged with the model it belongs to."""
        if self._state is None:
            raise RuntimeInputError("no state yet: call step() first")
        saved = {k: _host(v).copy() for k, v in self._state.items()}
        saved[STATE_FINGERPRINT_KEY] = np.array(self.spec.model_digest)
        return saved

    @state.setter
    def state(self, saved: dict[str, np.ndarray]) -> None:
        owner = str(saved.get(STATE_FINGERPRINT_KEY, ""))
        if owner != self.spec.model_digest:
            raise RuntimeInputError("this state was saved from another model (its weights differ); it cannot resume this stream")
        expected = self.spec.zero_state(int(np.asarray(saved[self.spec.state[0].past_count]).shape[0]))
        for name, zero in expected.items():
            if name not in saved:
                raise RuntimeInputError(f"state misses {name!r}")
            value = np.asarray(saved[name])
            if value.shape != zero.shape or value.dtype != zero.dtype:
                raise RuntimeInputError(f"state {name!r} must be {zero.dtype} {zero.shape}, got {value.dtype} {value.shape}")
        self._state = {name: np.array(saved[name]) for name in expected}
        self.batch = int(np.asarray(saved[self.spec.state[0].past_count]).shape[0])

    def save_state(self, path: str | Path) -> None:
        """Write the state (.npz) with a digest of its arrays, atomically."""
        state = self.state
        path = Path(path)
        with atomic_output(path) as tmp, open(tmp, "wb") as file:  # a file object: savez adds no suffix
            np.savez(file, **state, **{STATE_DIGEST_KEY: np.array(tensors_sha256(state))})

    def load_state(self, path: str | Path) -> None:
        """Resume from ``save_state``'s file; a damaged file is refused."""
        try:
            with np.load(path, allow_pickle=False) as data:  # an object array would be unpickled: refused
                saved = dict(data)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise RuntimeInputError(f"{path} is not a readable state file ({first_line(exc)})") from None
        digest = saved.pop(STATE_DIGEST_KEY, None)
        if digest is None:
            warnings.warn(f"{path} has no state digest (saved by an older pom-deploy): a damaged file cannot be detected",
                          PomDeployWarning, stacklevel=2)
        elif tensors_sha256(saved) != str(digest):
            raise RuntimeInputError(f"{path} is corrupted: its arrays do not match the sha256 digest saved with them")
        self.state = saved

    def reset(self, row: int | None = None) -> None:
        """Forget everything (row None), or restart one stream of the batch."""
        if row is None or self._state is None:
            self._state, self.batch = None, None
            return
        if not 0 <= row < (self.batch or 0):
            raise RuntimeInputError(f"row {row} is outside the batch of {self.batch} streams")
        host = {k: _host(v).copy() for k, v in self._state.items()}
        for value in host.values():
            value[row] = 0
        self._state = host

    # -- stepping ----------------------------------------------------------------------

    def step(self, chunk: np.ndarray, **extra: np.ndarray) -> np.ndarray:
        if 0 in np.shape(chunk):  # the state's mean would become 0/0: NaN for the rest of the stream
            raise RuntimeInputError(f"chunk has shape {tuple(np.shape(chunk))}: a step needs at least one token of at least one stream")
        batch = chunk.shape[0] if chunk.ndim else 0
        if self._state is None:
            self._state, self.batch = self.spec.zero_state(batch), batch
        elif batch != self.batch:
            raise RuntimeInputError(f"chunk has batch {batch} but the session carries {self.batch} streams; reset() to change it")
        feeds = {self.chunk_input.name: chunk, **extra}
        check_whole_frames(self.spec, chunk)
        _check_inputs(self.spec.data_inputs, feeds, self.spec.dim_multiples)
        outputs, kept = self.backend.run_keep_on_device({**feeds, **self._state}, self.spec.state_output_names)
        self._state = {self.spec.past_of[name]: value for name, value in kept.items()}
        return outputs[self.output_name]


def _host(value: Any) -> np.ndarray:
    return value if isinstance(value, np.ndarray) else value.numpy()


def _check_inputs(specs: list[TensorSpec], feeds: dict[str, Any], multiples: dict[str, int]) -> None:
    names = {s.name for s in specs}
    unknown = [k for k in feeds if k not in names]
    if unknown:
        raise RuntimeInputError(f"unknown input {unknown[0]!r}; the graph takes {', '.join(sorted(names))}")
    bound: dict[str, int] = {}
    for spec in specs:
        if spec.name not in feeds:
            raise RuntimeInputError(f"missing input {spec.name!r} {tuple(spec.shape)} {spec.dtype}")
        value = feeds[spec.name]
        if not isinstance(value, np.ndarray):
            raise RuntimeInputError(f"input {spec.name!r} must be a numpy array, got {type(value).__name__}")
        check_feed(spec, value, bound, multiples)
