"""The python-backend model of a repository written by ``pom-deploy triton-repo --backend python``.

The generated ``model.py`` imports ``TritonPythonModel`` from here, so the stub must run a Python that
has pom_deploy (``pom-deploy serve`` sees to it; in NVIDIA's container, ``pip install pom-deploy``).
It runs any file ``pom_deploy.load`` opens. Triton's python backend has no implicit state (the state
input keeps its initial value on every request, measured with tritonserver 2.51), so for step graphs
this model keeps each sequence's state itself, keyed by the CORRID control input: created at START,
freed at END, and at most ``max_sequences`` of them (sequences idle past the timeout are dropped to
make room; beyond that a new sequence is refused). Requests of different sequences that arrive in
one ``execute`` call with equal chunk shapes run as one batch.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import PomDeployError, first_line
from ..spec import GraphSpec

SELF_CHECK = np.arange(1, 9, dtype=np.float32)


class SequenceError(PomDeployError):
    """A request does not fit the sequence it names (not started, too many open, batch changed)."""


@dataclass
class SequenceStore:
    """Per-sequence state, bounded in number; idle sequences give way to new ones."""

    max_sequences: int
    idle_timeout_s: float
    zero_state: Callable[[int], dict[str, np.ndarray]]
    clock: Callable[[], float] = time.monotonic
    states: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)
    last_used: dict[int, float] = field(default_factory=dict)

    def begin(self, corrid: int, batch: int) -> None:
        """A new sequence (or a restart of ``corrid``) from the zero state."""
        self.end(corrid)
        if len(self.states) >= self.max_sequences:
            now = self.clock()
            for idle in [c for c, t in self.last_used.items() if now - t > self.idle_timeout_s]:
                self.end(idle)
        if len(self.states) >= self.max_sequences:
            raise SequenceError(f"sequence {corrid} refused: {self.max_sequences} sequences are open (max_sequences); end some first")
        self.states[corrid] = self.zero_state(batch)
        self.last_used[corrid] = self.clock()

    def get(self, corrid: int, batch: int) -> dict[str, np.ndarray]:
        if corrid not in self.states:
            raise SequenceError(f"sequence {corrid} has no state: start it with sequence_start (or it was idle too long)")
        state = self.states[corrid]
        held = next(iter(state.values())).shape[0]
        if held != batch:
            raise SequenceError(f"sequence {corrid} started with batch {held}, this request has batch {batch}")
        return state

    def put(self, corrid: int, state: dict[str, np.ndarray]) -> None:
        self.states[corrid] = state
        self.last_used[corrid] = self.clock()

    def end(self, corrid: int) -> None:
        self.states.pop(corrid, None)
        self.last_used.pop(corrid, None)


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
        self.next_state = {s.present_mean: s.past_mean for s in self.spec.state} | {s.present_count: s.past_count for s in self.spec.state}
        self.outputs = [t.name for t in self.spec.outputs if t.name not in self.next_state]
        self.store = SequenceStore(int(params.get("max_sequences", 64)), float(params.get("idle_timeout_s", 10)), self.spec.zero_state)

    def execute(self, requests) -> list:
        feeds, keys, responses = [], [], [None] * len(requests)
        for request in requests:
            inputs = {name: self.pb.get_input_tensor_by_name(request, name).as_numpy() for name in self.inputs}
            control = self._control(request) if self.spec.kind == "step" else None
            feeds.append((inputs, control))
            keys.append((control[0] if control else None, tuple((k, v.shape[1:], str(v.dtype)) for k, v in inputs.items())))
        for group in plan_groups(keys):
            try:
                results = self._run([feeds[i] for i in group])
            except PomDeployError:
                results = [self._run_alone(feeds[i]) for i in group]
            for i, result in zip(group, results):
                responses[i] = result
        return responses

    def _control(self, request) -> tuple[int, bool, bool]:
        value = {name: self.pb.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)[0] for name in ("CORRID", "START", "END")}
        return int(value["CORRID"]), bool(value["START"]), bool(value["END"])

    def _run_alone(self, feed):
        try:
            return self._run([feed])[0]
        except PomDeployError as exc:
            return self.pb.InferenceResponse(output_tensors=[], error=self.pb.TritonError(first_line(exc)))

    def _run(self, feeds: list) -> list:
        """One graph run for requests of equal shapes; the responses, in order (raises on failure)."""
        batches = [next(iter(inputs.values())).shape[0] for inputs, _ in feeds]
        run_feeds = {name: np.concatenate([inputs[name] for inputs, _ in feeds]) for name in self.inputs}
        if self.spec.kind == "step":
            for (_, (corrid, start, _end)), batch in zip(feeds, batches):
                if start:
                    self.store.begin(corrid, batch)
            states = [self.store.get(corrid, batch) for (_, (corrid, _, _)), batch in zip(feeds, batches)]
            for name in self.spec.state_input_names:
                run_feeds[name] = np.concatenate([s[name] for s in states])
        try:
            outputs = self.backend.run(run_feeds)
        except Exception as exc:
            if isinstance(exc, PomDeployError):
                raise
            raise SequenceError(first_line(exc)) from None
        offsets = np.cumsum([0, *batches])
        responses = []
        for number, (_inputs, control) in enumerate(feeds):
            rows = slice(offsets[number], offsets[number + 1])
            if control:
                corrid, _, end = control
                if end:
                    self.store.end(corrid)
                else:
                    self.store.put(corrid, {past: np.ascontiguousarray(outputs[present][rows])
                                            for present, past in self.next_state.items()})
            tensors = [self.pb.Tensor(name, np.ascontiguousarray(outputs[name][rows])) for name in self.outputs]
            responses.append(self.pb.InferenceResponse(output_tensors=tensors))
        return responses

    def finalize(self) -> None:
        self.store.states.clear()


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
