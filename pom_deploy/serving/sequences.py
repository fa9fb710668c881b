"""The per-stream state of the python-backend model (``triton_model.py``), and the step-numbering
contract that makes a retried step safe.

Streams are keyed by the request's whole correlation id as Triton hands it over
(``request.correlation_id()``: an ``int`` for an integer id, a ``str`` for a string id; ``7`` and
``"7"`` are two streams). Reading the id from a CORRID control tensor instead loses it: Triton
writes a string id's first 8 serialized bytes into a UINT64 control, so ``"cam-1"`` and
``"cam-2"`` would be one stream (measured with tritonserver 2.51).

Capacity: Triton's sequence batcher admits a START only when it has a free slot for it, and frees
the slot of a stream idle past its timeout without telling the model. So the store holds as many
streams as Triton has slots and, when a START Triton admitted finds it full, the least recently
used stream gives way: Triton has released at least one of the streams held, and a stream
Triton timed out is older than any it still keeps. A START is never refused for room.

Step numbers: each stream counts its applied steps from 0 (the START). A client may send the
number of the step it sends (the request parameter ``step``). Then a retry of the last applied
step (same number, same inputs: the client timed out or lost the answer after the step was
applied) is answered from the stored result instead of being applied twice, a repeated number
with other inputs is refused (two clients stepping one id at once), and a gap is refused.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Hashable

import numpy as np

from ..errors import PomDeployError

STEP_PARAMETER = "step"  # the request parameter that carries the client's step number


class SequenceError(PomDeployError):
    """A request does not fit the stream it names (not started, step out of order, batch changed)."""


@dataclass
class Stream:
    """One open stream: its state and what the last applied step returned (for a retry)."""

    batch: int
    state: dict[str, np.ndarray]
    step: int  # number of the last applied step; the START is step 0
    inputs_digest: str  # of the last applied step's inputs
    outputs: dict[str, np.ndarray]


@dataclass
class StepPlan:
    """What to do with one request: run from ``state`` as step ``step``, or answer ``replay``."""

    step: int
    state: dict[str, np.ndarray] | None = None
    replay: dict[str, np.ndarray] | None = None


class SequenceStore:
    """Open streams by correlation id, at most ``capacity`` (Triton's slots per model instance);
    nothing changes until ``commit``, so a refused or cancelled request leaves its stream as it was."""

    def __init__(self, capacity: int, zero_state: Callable[[int], dict[str, np.ndarray]]):
        self.capacity = capacity
        self.zero_state = zero_state
        self.streams: OrderedDict[Hashable, Stream] = OrderedDict()  # least recently used first

    def plan(self, sequence: Hashable, start: bool, step: int | None, batch: int, inputs_digest: str) -> StepPlan:
        """The step a request asks for, checked against its stream (SequenceError when it does not fit)."""
        stream = self.streams.get(sequence)
        if step is not None and stream is not None and step == stream.step:
            if inputs_digest != stream.inputs_digest:
                raise SequenceError(f"step {step} of sequence {sequence!r} was already applied with other inputs: "
                                    "is another client sending on this sequence id?")
            self.streams.move_to_end(sequence)
            return StepPlan(step, replay=stream.outputs)
        if start:
            if step not in (None, 0):
                raise SequenceError(f"a sequence_start request is step 0, this one says step {step}")
            return StepPlan(0, state=self.zero_state(batch))
        if stream is None:
            raise SequenceError(f"sequence {sequence!r} has no state: send its chunk again with sequence_start "
                                "(its start failed, or it was idle past the timeout)")
        if stream.batch != batch:
            raise SequenceError(f"sequence {sequence!r} started with batch {stream.batch}, this request has batch {batch}")
        if step is not None and step != stream.step + 1:
            raise SequenceError(f"step {step} of sequence {sequence!r} is out of order: the next step is {stream.step + 1} "
                                f"(a retry repeats {stream.step}); start the sequence again to recover")
        return StepPlan(stream.step + 1, state=stream.state)

    def commit(self, sequence: Hashable, end: bool, stream: Stream) -> None:
        """Store the state after an applied step (or drop the stream at its END)."""
        self.streams.pop(sequence, None)
        if not end:
            self.streams[sequence] = stream
            while len(self.streams) > self.capacity:
                self.streams.popitem(last=False)


def step_number(parameters: dict) -> int | None:
    """The client's step number from the request parameters (None when it sent none)."""
    value = parameters.get(STEP_PARAMETER)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SequenceError(f"the {STEP_PARAMETER!r} parameter must be an integer >= 0, got {value!r}")
    return value
