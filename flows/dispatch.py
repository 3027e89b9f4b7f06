"""Segment dispatch: one interface, two modes, and the loop that drives either.

- `LocalDispatcher` renders segments in this process (the embedded default on one machine).
- `DeploymentDispatcher` starts a `render-segment` deployment run on a GPU work pool.

A run renders one or more consecutive segments in turn with the pipeline loaded once (a render
farm's chunk size: loading the model costs seconds to tens of seconds per process, and process
workers start a new process per run). Each segment still writes its own record as it finishes,
so a crash or a lost worker costs only the segments that run had not finished.

`drive_segments` keeps at most `max_in_flight` runs going, never re-renders a segment whose record
exists, resubmits the unfinished segments of crashed or lost runs (Prefect retries do not cover
Crashed) up to `max_attempts` per segment, treats a run whose heartbeat stops as lost, and fails
the job at once, naming the segment, when a segment fails for a reason a retry would not fix.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

# scheduled: waiting for a worker (not lost, however long); pending: claimed by a worker, its process
# starting; running: rendering. Pending and running runs must show signs of life.
RunState = Literal["scheduled", "pending", "running", "completed", "failed", "crashed", "cancelled"]
# Seconds between two polls of in-flight deployment runs.
DEFAULT_POLL_SECONDS = 2.0


@dataclass(frozen=True)
class SegmentRun:
    segments: tuple[int, ...]
    attempt: int
    state: RunState = "scheduled"
    message: str = ""
    flow_run_id: str | None = None


class SegmentJobFailed(RuntimeError):
    """A segment failed in a way a retry would not fix, or ran out of attempts."""


class Dispatcher(Protocol):
    def submit(self, segments: tuple[int, ...], attempt: int) -> SegmentRun: ...

    def poll(self, run: SegmentRun) -> SegmentRun: ...

    def cancel(self, run: SegmentRun, reason: str) -> None: ...

    def mark_lost(self, run: SegmentRun, reason: str) -> None: ...


@dataclass
class LocalDispatcher:
    """Runs `render(segments, attempt)` right away in this process; errors fail the run."""

    render: Callable[[tuple[int, ...], int], None]

    def submit(self, segments: tuple[int, ...], attempt: int) -> SegmentRun:
        try:
            self.render(segments, attempt)
        except Exception as exc:  # the segment's own error: reported, not retried
            return SegmentRun(segments, attempt, "failed", f"{type(exc).__name__}: {exc}")
        return SegmentRun(segments, attempt, "completed")

    def poll(self, run: SegmentRun) -> SegmentRun:
        return run

    def cancel(self, run: SegmentRun, reason: str) -> None:
        """Nothing runs in the background locally."""

    def mark_lost(self, run: SegmentRun, reason: str) -> None:
        """A local run cannot be lost without this process."""


@dataclass
class DeploymentDispatcher:
    """Starts one deployment run per group of segments and attempt, and follows its state through the API."""

    deployment: str
    parameters: Callable[[tuple[int, ...], int], dict]
    job_id: str
    work_queue_name: str | None = None
    extra_tags: tuple[str, ...] = ()

    def submit(self, segments: tuple[int, ...], attempt: int) -> SegmentRun:
        from prefect.deployments import run_deployment

        name = segments_name(segments)
        flow_run = run_deployment(
            self.deployment,
            parameters=self.parameters(segments, attempt),
            timeout=0,
            idempotency_key=f"{self.job_id}:{name}:attempt-{attempt}",
            work_queue_name=self.work_queue_name,
            tags=[f"job:{self.job_id}", *(f"segment:{s}" for s in segments), *self.extra_tags],
            flow_run_name=f"{self.job_id}-{name}-try-{attempt}",
            as_subflow=True,
        )
        return SegmentRun(segments, attempt, _state(flow_run.state), flow_run_id=str(flow_run.id))

    def poll(self, run: SegmentRun) -> SegmentRun:
        from prefect import get_client

        with get_client(sync_client=True) as client:
            flow_run = client.read_flow_run(run.flow_run_id)
        message = (flow_run.state.message or "") if flow_run.state else ""
        return replace(run, state=_state(flow_run.state), message=message)

    def cancel(self, run: SegmentRun, reason: str) -> None:
        from prefect import get_client
        from prefect.states import Cancelling

        with get_client(sync_client=True) as client:
            client.set_flow_run_state(run.flow_run_id, Cancelling(message=reason), force=True)

    def mark_lost(self, run: SegmentRun, reason: str) -> None:
        """The run's worker is gone (no heartbeat): record the run as Crashed, as infrastructure failed."""
        from prefect import get_client
        from prefect.states import Crashed

        with get_client(sync_client=True) as client:
            client.set_flow_run_state(run.flow_run_id, Crashed(message=reason), force=True)


def segments_label(segments: tuple[int, ...]) -> str:
    """`segment 3`, or `segments 3-5` for a run of consecutive segments."""
    if len(segments) == 1:
        return f"segment {segments[0]}"
    return f"segments {segments[0]}-{segments[-1]}"


def segments_name(segments: tuple[int, ...]) -> str:
    """The label as a run-name part: `segment-3`, `segments-3-5`."""
    return segments_label(segments).replace(" ", "-")


def segments_per_run(requested: int, num_segments: int, max_in_flight: int, auto_cap: int = 4) -> int:
    """Segments per run: `requested`, or (0) spread evenly over `max_in_flight` runs, at most `auto_cap`."""
    if requested > 0:
        return requested
    return max(1, min(auto_cap, -(-num_segments // max_in_flight)))


def _state(state) -> RunState:
    if state is None:
        return "scheduled"
    name = state.type.value
    return {
        "COMPLETED": "completed",
        "FAILED": "failed",
        "CRASHED": "crashed",
        "CANCELLED": "cancelled",
        "CANCELLING": "cancelled",
        "RUNNING": "running",
        "PENDING": "pending",
    }.get(name, "scheduled")


@dataclass
class _Watch:
    """When this run last showed a sign of life (a new state or a new heartbeat), on this process's
    clock (immune to clock skew)."""

    beat: object = None
    changed_at: float = field(default_factory=time.monotonic)


def drive_segments(
    segments: list[int],
    dispatcher: Dispatcher,
    *,
    is_done: Callable[[int], bool],
    heartbeat: Callable[[int], object],
    max_in_flight: int,
    max_attempts: int,
    stale_after: float,
    per_run: int = 1,
    poll_seconds: float = DEFAULT_POLL_SECONDS,
    on_progress: Callable[[int, int], None] = lambda done, total: None,
    on_resubmit: Callable[[list[int]], None] = lambda segments: None,
    log: Callable[[str], None] = print,
) -> dict[int, int]:
    """Run every segment not yet done, `per_run` consecutive segments per run; return the number of
    attempts each segment took.

    A run waiting for a worker (scheduled) is never lost. A run a worker has claimed (pending)
    or is rendering (running) is lost when it shows no sign of life (a state change or a new
    heartbeat) for `stale_after` seconds: a worker that dies while its run's process starts is
    caught like one that dies mid-segment. `on_resubmit` is called with the segments of a crashed
    or lost run before they are submitted again.

    Raises SegmentJobFailed when a segment fails for its own reasons (no retry), or crashes,
    is lost or is cancelled `max_attempts` times. In-flight runs are cancelled first.
    """
    if per_run < 1:
        raise ValueError(f"per_run must be at least 1, got {per_run}")
    total = len(segments)
    done = {s for s in segments if is_done(s)}
    if done:
        log(f"{len(done)} of {total} segments already rendered: not rendering them again")
    todo = [s for s in segments if s not in done]
    queue = deque(tuple(todo[i : i + per_run]) for i in range(0, len(todo), per_run))
    attempts: dict[int, int] = {}
    in_flight: dict[tuple[int, ...], SegmentRun] = {}
    watches: dict[tuple[int, ...], _Watch] = {}
    on_progress(len(done), total)

    def fail(message: str) -> None:
        for run in in_flight.values():
            dispatcher.cancel(run, f"job failed: {message}")
        raise SegmentJobFailed(message)

    def collect(group: tuple[int, ...]) -> list[int]:
        """Count the group's newly recorded segments as done; return those still unfinished."""
        fresh = [s for s in group if s not in done and is_done(s)]
        if fresh:
            done.update(fresh)
            on_progress(len(done), total)
        return [s for s in group if s not in done]

    def retry_or_fail(run: SegmentRun, remaining: list[int], why: str) -> None:
        for segment in remaining:
            if attempts[segment] >= max_attempts:
                fail(f"segment {segment} {why} {attempts[segment]} times (max_attempts={max_attempts}); "
                     f"last: {run.message or 'no message'}")
        log(f"{segments_label(tuple(remaining))} {why} on attempt {run.attempt}: resubmitting ({run.message})")
        on_resubmit(remaining)
        queue.appendleft(tuple(remaining))

    while queue or in_flight:
        while queue and len(in_flight) < max_in_flight:
            group = queue.popleft()
            for segment in group:
                attempts[segment] = attempts.get(segment, 0) + 1
            in_flight[group] = dispatcher.submit(group, max(attempts[s] for s in group))
            watches[group] = _Watch()
        for group, run in list(in_flight.items()):
            run = in_flight[group] = dispatcher.poll(run)
            if run.state == "scheduled":
                watches[group] = _Watch()  # waiting for a worker is not lost: the clock starts once claimed
                continue
            if run.state in ("pending", "running"):
                remaining = collect(group)
                beat, watch = (run.state, *(heartbeat(s) for s in remaining)), watches[group]
                if beat != watch.beat:
                    watches[group] = _Watch(beat)
                elif time.monotonic() - watch.changed_at > stale_after:
                    silence = (f"no heartbeat for {stale_after:.0f} s" if run.state == "running" else
                               f"claimed by a worker but not started for {stale_after:.0f} s")
                    dispatcher.mark_lost(run, f"{silence}: worker lost")
                    del in_flight[group]
                    if remaining:
                        retry_or_fail(replace(run, message=silence), remaining, "was lost")
                continue
            del in_flight[group]
            remaining = collect(group)  # a record exists: done, whatever the run's final state says
            if not remaining:
                continue
            if run.state == "failed":
                # A run renders its segments in order and stops at the first failure.
                fail(f"segment {remaining[0]} failed: {run.message}")
            elif run.state == "completed":
                retry_or_fail(replace(run, message="completed without writing its record"), remaining,
                              "left no record")
            else:
                retry_or_fail(run, remaining, "crashed" if run.state == "crashed" else "was cancelled")
        if in_flight:
            time.sleep(poll_seconds)
    return attempts
