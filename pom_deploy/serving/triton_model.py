"""The python-backend model of a repository written by ``pom-deploy triton-repo --backend python``.

The generated ``model.py`` imports ``TritonPythonModel`` from here, so the stub must run a Python that
has pom_deploy (``pom-deploy serve`` sees to it; in NVIDIA's container, ``pip install pom-deploy``).
It runs any file ``pom_deploy.load`` opens. Triton's python backend has no implicit state (the state
input keeps its initial value on every request, measured with tritonserver 2.51), so for step graphs
this model keeps each stream's state itself (``sequences.py``: keyed by the whole correlation id,
bounded by Triton's slots, retries answered by step number). Every request is checked alone first
(chunk size, step number, stream); a request that fails gets its own error and leaves its stream
untouched, and a request whose client cancelled it (a gRPC timeout) is not committed. Requests of
different streams that arrive in one ``execute`` call with equal chunk shapes run as one batch.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Hashable

import numpy as np

from ..digests import tensors_sha256
from ..errors import PomDeployError, RuntimeInputError, first_line
from ..runtime.base import check_whole_frames
from ..spec import GraphSpec, TensorSpec
from .sequences import SequenceError, SequenceStore, Stream, step_number

SELF_CHECK = np.arange(1, 9, dtype=np.float32)


class CancelledError(PomDeployError):
    """The client gave up on the request (timeout, cancel) before its result was committed."""


def plan_groups(keys: list[tuple[Any, Any]]) -> list[list[int]]:
    """Split requests ``(sequence, shape)`` into groups that can run as one batch, in order.

    A group never holds two requests of one sequence (the second needs the first's state), and a
    request never runs before an earlier one of its sequence.
    """
    groups: list[dict[Any, list[int]]] = []
    latest: dict[Any, int] = {}
    for index, (sequence, shape) in enumerate(keys):
        number = latest.get(sequence, -1) + 1 if sequence is not None else 0
        latest[sequence] = number
        while len(groups) <= number:
            groups.append({})
        groups[number].setdefault(shape, []).append(index)
    return [members for by_shape in groups for members in by_shape.values()]


def self_check(pb_utils) -> None:
    """Refuse to start where the stub would answer with empty tensors.

    With numpy 2.x in the stub's environment, tritonserver 2.51's python backend returns outputs of
    the right shape and zero bytes, silently. A tensor round trip through the stub's own memory
    (DLPack) shows it: it reads back zeros there, the data elsewhere.
    """
    probe = pb_utils.Tensor("probe", SELF_CHECK)
    back = pb_utils.Tensor.from_dlpack("probe", probe.to_dlpack()).as_numpy()
    if not np.array_equal(back, SELF_CHECK):
        raise RuntimeError(f"pom-deploy: this python backend would return empty tensors (numpy {np.__version__} in {sys.prefix}); "
                           "run tritonserver from an environment with numpy<2 (pip install 'pom-deploy[serve]')")


@dataclass
class Request:
    """One request, read and checked alone: its inputs and, for a step graph, its stream and step."""

    request: Any
    inputs: dict[str, np.ndarray]
    sequence: Hashable = None  # the whole correlation id (int or str); None for full graphs
    start: bool = False
    end: bool = False
    step: int | None = None  # the client's step number, when it sent one
    inputs_digest: str = ""

    @property
    def batch(self) -> int:
        return next(iter(self.inputs.values())).shape[0]


class TritonPythonModel:
    """Triton's python-backend interface over a pom_deploy session."""

    def initialize(self, args: dict[str, str]) -> None:
        import triton_python_backend_utils as pb_utils  # only inside the stub

        from ..runtime import load

        self.pb = pb_utils
        self_check(pb_utils)
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        path = Path(args["model_repository"]) / args["model_version"] / params["model_file"]
        options = {"threads": int(params.get("threads", 1))} if path.suffix == ".onnx" else {}
        session = load(path, device=params.get("device", "cpu"), **options)
        self.backend, self.spec = session.backend, session.spec
        if self.spec is None:
            raise RuntimeError(f"pom-deploy: {path.name} has no pom-deploy metadata (export it with pom-export)")
        self.inputs = [t.name for t in self.spec.data_inputs]
        self.next_state = self.spec.past_of
        self.outputs = [t.name for t in self.spec.outputs if t.name not in self.next_state]
        self.chunk = self.spec.data_inputs[0]
        self.max_chunk = int(params["max_chunk"]) if "max_chunk" in params else None
        self.store = SequenceStore(int(params.get("max_sequences", 64)), self.spec.zero_state)

    def execute(self, requests) -> list:
        responses: list = [None] * len(requests)
        read: list[tuple[int, Request]] = []
        for index, request in enumerate(requests):
            try:
                read.append((index, self._read(request)))
            except PomDeployError as exc:
                responses[index] = self._error(exc)
        keys = [(item.sequence, tuple((k, v.shape[1:], str(v.dtype)) for k, v in item.inputs.items())) for _, item in read]
        for group in plan_groups(keys):
            items = [read[i][1] for i in group]
            try:
                results = self._run(items)
            except PomDeployError:  # the batch failed as a whole: each request alone, so only the bad one fails
                results = [self._run_alone(item) for item in items]
            for i, result in zip(group, results):
                responses[read[i][0]] = result
        return responses

    def _read(self, request) -> Request:
        """The request's inputs and controls, checked against what this model takes."""
        inputs = {name: self.pb.get_input_tensor_by_name(request, name).as_numpy() for name in self.inputs}
        check_chunk(self.chunk, inputs[self.chunk.name], self.max_chunk)
        if self.spec.kind != "step":
            return Request(request, inputs)
        check_whole_frames(self.spec, inputs[self.chunk.name])
        if request.is_cancelled():
            raise CancelledError(CANCELLED)
        control = {name: bool(self.pb.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)[0]) for name in ("START", "END")}
        return Request(request, inputs, sequence=request.correlation_id(), start=control["START"], end=control["END"],
                       step=step_number(json.loads(request.parameters() or "{}")), inputs_digest=tensors_sha256(inputs))

    def _run_alone(self, item: Request):
        try:
            return self._run([item])[0]
        except PomDeployError as exc:
            return self._error(exc)

    def _error(self, exc: Exception):
        return self.pb.InferenceResponse(output_tensors=[], error=self.pb.TritonError(first_line(exc)))

    def _response(self, outputs: dict[str, np.ndarray]):
        return self.pb.InferenceResponse(output_tensors=[self.pb.Tensor(name, outputs[name]) for name in self.outputs])

    def _run(self, items: list[Request]) -> list:
        """One graph run for the requests of ``items`` that need one (equal shapes); the responses,
        in order. A request that does not fit its stream, or is a retry, is answered alone; raises
        when the run itself fails."""
        responses: list = [None] * len(items)
        plans = {}
        for number, item in enumerate(items):
            if self.spec.kind != "step":
                plans[number] = None
                continue
            try:
                plan = self.store.plan(item.sequence, item.start, item.step, item.batch, item.inputs_digest)
            except PomDeployError as exc:
                responses[number] = self._error(exc)
                continue
            if plan.replay is not None:
                responses[number] = self._response(plan.replay)
            else:
                plans[number] = plan
        if not plans:
            return responses
        run_feeds = {name: np.concatenate([items[n].inputs[name] for n in plans]) for name in self.inputs}
        for name in self.spec.state_input_names:
            run_feeds[name] = np.concatenate([plan.state[name] for plan in plans.values()])
        try:
            outputs = self.backend.run(run_feeds)
        except Exception as exc:
            if isinstance(exc, PomDeployError):
                raise
            raise SequenceError(first_line(exc)) from None
        offsets = np.cumsum([0, *(items[n].batch for n in plans)])
        for row, (number, plan) in enumerate(plans.items()):
            item, rows = items[number], slice(offsets[row], offsets[row + 1])
            result = {name: np.ascontiguousarray(outputs[name][rows]) for name in self.outputs}
            if plan is not None:
                if item.request.is_cancelled():  # the client gave up: applying it would feed its retry twice
                    responses[number] = self._error(CancelledError(CANCELLED))
                    continue
                state = {past: np.ascontiguousarray(outputs[present][rows]) for present, past in self.next_state.items()}
                self.store.commit(item.sequence, item.end, Stream(item.batch, state, plan.step, item.inputs_digest, result))
            responses[number] = self._response(result)
        return responses

    def finalize(self) -> None:
        self.store.streams.clear()


CANCELLED = "cancelled by the client (timed out?) before it was applied: the stream is unchanged; send the step again"


def check_chunk(spec: TensorSpec, chunk: np.ndarray, max_chunk: int | None) -> None:
    """Refuse an empty chunk (its tokens would make the state's mean 0/0, NaN for the rest of the
    stream) and one longer than ``max_chunk`` (it would hold every stream batched behind it)."""
    if 0 in chunk.shape:
        raise RuntimeInputError(f"{spec.name} has shape {tuple(chunk.shape)}: a chunk needs at least one token")
    if max_chunk is not None and chunk.ndim > 1 and chunk.shape[1] > max_chunk:
        raise RuntimeInputError(f"{spec.name} has {chunk.shape[1]} tokens, more than this model takes in one request "
                                f"({max_chunk}, its max_chunk): split it into smaller chunks")


SITE_FOLDERS_VARIABLE = "POM_DEPLOY_SITE_FOLDERS"


def generated_model_py(spec: GraphSpec) -> str:
    """The ``model.py`` written into a repository: the class above, found at run time."""
    return (f'"""Triton python-backend model for a pom-deploy {spec.kind} graph (weights {spec.model_digest}),\n'
            'written by `pom-deploy triton-repo`. The stub must run a Python with pom-deploy installed: see\n'
            'the README.md beside the config."""\n\n'
            "import os\n"
            "import site\n\n"
            "# Set by `pom-deploy serve`: the site folders of the Python that started the server (the stub's\n"
            "# embedded interpreter ignores PYTHONPATH); absent in other deployments.\n"
            f"for folder in os.environ.get({SITE_FOLDERS_VARIABLE!r}, \"\").split(os.pathsep):\n"
            "    if folder:\n"
            "        site.addsitedir(folder)  # also runs its .pth files (an editable install's hook)\n\n"
            "from pom_deploy.serving.triton_model import TritonPythonModel  "
            "# noqa: E402,F401 - after the site folders; Triton looks the class up here\n")
