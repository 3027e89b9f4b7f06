"""Progress reporting: Prefect progress artifacts (throttled) plus an optional in-process listener.

A render job has one progress bar (`JobProgress`): denoising steps done / total across all its
segments, its text naming the stage. Segment runs report their steps through the store
(`SegmentSteps`: the job may run on another machine) and, in the job's own process, directly.

Progress updates are API calls (Prefect pitfall P11): each reporter sends at most one update per
`min_interval` seconds, and always the first that completes it. A listener set by the CLI gets
every update, so a local run can also draw a terminal progress bar.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

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
        self._sent = 0.0
        self._artifact_id = create_progress_artifact(progress=0.0, key=self.key, description=description)
        self._notify(0.0, description)

    def update(self, fraction: float, description: str | None = None, *, force: bool = False) -> None:
        from prefect.artifacts import update_progress_artifact

        fraction = min(max(fraction, 0.0), 1.0)
        text = description or self.description
        self._notify(fraction, text)
        now = time.monotonic()
        if force or (fraction >= 1.0 > self._sent) or now - self._last_sent >= self.min_interval:
            update_progress_artifact(self._artifact_id, progress=100.0 * fraction, description=text)
            self._last_sent, self._sent = now, fraction

    def _notify(self, fraction: float, text: str) -> None:
        with _lock:
            listeners = list(_listeners)
        for listener in listeners:
            listener(self.key, fraction, text)


class JobProgress:
    """A render job's one progress bar: denoising steps done / total across all its segments (0
    before rendering, full after), its text naming the stage.

    Steps come from `segments_done` (segments finished), `running` (the steps of the segments
    being rendered) and, for segments rendered in this process, from `SegmentSteps` directly
    (`watching_steps`).
    """

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.reporter = ProgressReporter(artifact_key(job_id, "progress"), f"job {job_id}: starting")
        self.segments = self.steps = self.done = 0
        self.live: dict[int, int] = {}  # steps done by the segments rendering now

    @property
    def fraction(self) -> float:
        if not self.segments:
            return 0.0
        return min(1.0, (self.done * self.steps + sum(self.live.values())) / (self.segments * self.steps))

    def stage(self, name: str, done: int = 0, total: int = 0, unit: str = "", *, force: bool = False) -> None:
        """Name the stage, with its own progress (`done/total unit`) if given."""
        self.reporter.update(self.fraction, f"{name}: {done}/{total} {unit}".rstrip() if total else name, force=force)

    def start_rendering(self, segments: int, steps: int) -> None:
        self.segments, self.steps = segments, steps
        self._render_text()

    def segments_done(self, done: int, total: int) -> None:
        """`done` segments are finished: that many of those at full steps leave the live ones."""
        finished = [segment for segment, step in self.live.items() if step >= self.steps][: done - self.done]
        for segment in finished:
            del self.live[segment]
        self.done = done
        self._render_text()

    def running(self, steps: dict[int, int]) -> None:
        """The steps done by each segment rendering now."""
        self.live = dict(steps)
        self._render_text()

    def step(self, segment: int, step: int) -> None:
        self.live[segment] = step
        self._render_text()

    def finish(self, text: str) -> None:
        self.reporter.update(1.0, text, force=True)

    def _render_text(self) -> None:
        steps = round(self.fraction * self.segments * self.steps)
        self.reporter.update(self.fraction, f"rendering: {steps}/{self.segments * self.steps} denoising steps, "
                                            f"{self.done}/{self.segments} segments done")


_step_watchers: dict[str, Callable[[int, int], None]] = {}


@contextmanager
def watching_steps(job_id: str, on_step: Callable[[int, int], None]) -> Iterator[None]:
    """Pass the steps of the job's segments rendered in this process to `on_step(segment, step)`."""
    with _lock:
        _step_watchers[job_id] = on_step
    try:
        yield
    finally:
        with _lock:
            _step_watchers.pop(job_id, None)


class SegmentSteps:
    """A segment's denoising progress: written (throttled) to the segment's folder in the store for
    its job to read, wherever the job runs, and passed to the job at once when it runs here."""

    def __init__(self, store, key: str, job_id: str, segment: int, *,
                 min_interval: float = DEFAULT_MIN_INTERVAL) -> None:
        self.store, self.key, self.job_id, self.segment = store, key, job_id, segment
        self.min_interval = min_interval
        self._last_written = 0.0

    def update(self, step: int, total: int) -> None:
        with _lock:
            watcher = _step_watchers.get(self.job_id)
        if watcher is not None:
            watcher(self.segment, step)
        now = time.monotonic()
        if step >= total or now - self._last_written >= self.min_interval:
            self.store.write_json(self.key, dict(step=step, total=total))
            self._last_written = now
