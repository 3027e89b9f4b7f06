"""Errors raised by the pose package: every message names the input at fault."""

from __future__ import annotations

INSTALL_HINT = "pip install 'controlnext-video[pose]'"


class PoseError(Exception):
    """Base class for pose errors."""


class PoseInputError(PoseError, ValueError):
    """Bad input: an unreadable file, a malformed array, a wrong parameter."""


class NoPersonError(PoseError):
    """No person was found where one is required (the reference image, a whole clip)."""


class PoseInputWarning(UserWarning):
    """An input that is used, but probably not as intended (a reference far below the output size)."""


class MissingDependencyError(PoseError, ImportError):
    """An optional dependency of the pose extra is not installed."""


def require(module: str, purpose: str):
    """Import an optional dependency, failing with an install hint.

    Heavy libraries (cv2, mediapipe, onnxruntime, av) are imported here, inside the functions
    that need them, so importing `pose` stays cheap.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{purpose} needs the Python module '{module}', which is not installed "
            f"({exc}). Install the pose extra: {INSTALL_HINT}"
        ) from exc
