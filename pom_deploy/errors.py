"""Typed exceptions for user errors.

The CLI turns any ``PomDeployError`` into one line on stderr and a non-zero exit; anything
else is a bug and keeps its traceback.
"""


def first_line(exc: BaseException) -> str:
    """The first non-blank line of an exception's message (its type name if it has none):
    what a one-line error quotes from a library's error."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


class PomDeployError(Exception):
    """Base class of the errors a user can fix (bad file, bad argument, bad input)."""


class ModelLoadError(PomDeployError):
    """A model file is missing, unreadable, corrupted or of an unknown kind."""


class ArchitectureError(PomDeployError):
    """An architecture description is invalid (unknown name, bad hyper-parameters)."""


class StateDictMismatchError(ModelLoadError):
    """A state_dict does not fit the architecture (missing, unexpected or mis-shaped key)."""


class UntrustedPickleError(ModelLoadError):
    """The file is a pickled module and the caller did not opt in to unpickling it."""


class ExportError(PomDeployError):
    """The model cannot be exported (unsupported, forward fails, bad option, bad output path)."""


class VerificationError(PomDeployError):
    """The exported graph disagrees with PyTorch beyond tolerance."""


class RuntimeInputError(PomDeployError):
    """An input or state given to a runtime session has the wrong name, shape or dtype."""


class BackendUnavailableError(PomDeployError):
    """An optional backend (TensorRT, a CUDA provider) is not installed on this machine."""


class PomDeployWarning(UserWarning):
    """Something the user should know that does not stop the command (the CLI prints one line)."""
