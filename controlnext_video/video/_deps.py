"""Optional heavy dependencies, imported where used with an install hint."""

from __future__ import annotations

from types import ModuleType

INSTALL_HINT = "pip install 'controlnext-video[video]'"


def import_av() -> ModuleType:
    """Return the PyAV module, or raise ImportError naming the extra to install."""
    try:
        import av
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError(f"video I/O needs PyAV: {INSTALL_HINT}") from exc
    return av


def import_decord() -> ModuleType | None:
    """Return decord, or None when it is not installed (PyAV is then used alone)."""
    try:
        import decord
    except ImportError:
        return None
    return decord
