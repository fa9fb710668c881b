"""What every command shares: one-line errors, consoles, version text, sizes."""

from __future__ import annotations

import sys
import warnings
from typing import Callable

from rich.console import Console

from ..version import __version__
from ..errors import PomDeployError, PomDeployWarning

EXIT_USER_ERROR = 1
EXIT_INTERRUPTED = 130


def run_command(func: Callable[[], int]) -> int:
    """Run a command: user errors become one line on stderr and exit 1, Ctrl-C exits 130;
    pom-deploy's warnings are one line each."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", PomDeployWarning)
            warnings.showwarning = _show_warning
            return func()
    except PomDeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, PomDeployWarning):
        print(f"warning: {message}", file=sys.stderr)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def stderr_console(quiet: bool = False) -> Console:
    return Console(stderr=True, quiet=quiet)


def version_text(prog: str) -> str:
    import onnxruntime
    import torch

    return f"{prog} (pom-deploy {__version__}; torch {torch.__version__}, onnxruntime {onnxruntime.__version__})"


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"
