"""Writing output files safely: checked before any work, replaced only when complete."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import PomDeployError


def check_output_path(path: Path, force: bool, error: type[PomDeployError]) -> None:
    """Fail early, with ``error``, when ``path`` cannot or must not be written."""
    parent = path.parent
    if not parent.is_dir():
        raise error(f"output directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise error(f"output directory {parent} is not writable")
    if path.is_dir():
        raise error(f"output {path} is a directory")
    if path.exists() and not force:
        raise error(f"{path} exists; pass --force (force=True) to overwrite it")


@contextmanager
def atomic_output(path: Path):
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
