"""Progress reporting: Prefect progress artifacts (throttled) plus an optional in-process listener.

Progress updates are API calls (Prefect pitfall P11): each reporter sends at most one update per
`min_interval` seconds, and always the final one. A listener set by the CLI gets every update,
so a local run can also draw a terminal progress bar.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable

# Seconds between two artifact updates of one reporter.
DEFAULT_MIN_INTERVAL = 2.0

Listener = Callable[[str, float, str], None]  # (key, fraction done, description)
_listeners: list[Listener] = []
_lock = threading.Lock()


def add_listener(listener: Listener) -> None:
    with _lock:
        _listeners.append(listener)


def remove_listener(listener: Listener) -> None:
    with _lock:
        if listener in _listeners:
            _listeners.remove(listener)


def artifact_key(*parts: str) -> str:
    """An artifact key from parts: lowercase letters, digits and dashes only (Prefect's rule)."""
    key = "-".join(parts).lower()
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", key)).strip("-")[:100]


class ProgressReporter:
    """One progress bar in the Prefect UI (a progress artifact), updated in place."""

    def __init__(self, key: str, description: str, *, min_interval: float = DEFAULT_MIN_INTERVAL) -> None:
        from prefect.artifacts import create_progress_artifact

        self.key = artifact_key(key)
        self.description = description
        self.min_interval = min_interval
        self._last_sent = 0.0
        self._artifact_id = create_progress_artifact(progress=0.0, key=self.key, description=description)
        self._notify(0.0, description)

    def update(self, fraction: float, description: str | None = None, *, force: bool = False) -> None:
        from prefect.artifacts import update_progress_artifact

        fraction = min(max(fraction, 0.0), 1.0)
        text = description or self.description
        self._notify(fraction, text)
        now = time.monotonic()
        if force or fraction >= 1.0 or now - self._last_sent >= self.min_interval:
            update_progress_artifact(self._artifact_id, progress=100.0 * fraction, description=text)
            self._last_sent = now

    def _notify(self, fraction: float, text: str) -> None:
        with _lock:
            listeners = list(_listeners)
        for listener in listeners:
            listener(self.key, fraction, text)
