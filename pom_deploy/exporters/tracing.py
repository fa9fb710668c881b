"""Helpers around ``torch.onnx.export``: quieting it, and keeping the useful line of its errors."""

from __future__ import annotations

import contextlib
import io
import logging

from ..errors import first_line


def as_tuple(value) -> tuple:
    """A model's output(s) as a tuple."""
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def exporter_error(exc: BaseException) -> str:
    """The torch exporter wraps the cause in a long report: keep its innermost summary."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return f"{type(exc).__name__}: {first_line(exc)}"


@contextlib.contextmanager
def quiet_exporter():
    """The exporter logs progress and torchvision notices through logging and stdout."""
    loggers = [logging.getLogger(n)
               for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript", "torch.fx.experimental.symbolic_shapes")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
