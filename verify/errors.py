"""Errors a user can cause. Each carries a one-line message: what went wrong, where, what to do.

The CLI prints `verify: error: <message>` and exits with code 2 for every `VerifyError`.
"""


class VerifyError(Exception):
    """Base class of every error caused by user input (files, arguments, models)."""


class ModelLoadError(VerifyError):
    """The model file is missing, unreadable or not a valid ONNX model."""


class UnsupportedModelError(ModelLoadError):
    """The ONNX model uses operations or shapes that the Network representation cannot hold."""


class InputError(VerifyError):
    """A bad input point, label, radius, norm, domain or option."""


def not_a_file(path) -> str:
    """Why `path` (a pathlib.Path that is not a regular file) cannot be read, in a few words."""
    return "a folder, not a file" if path.is_dir() else "no such file"
