"""Segment dispatch: one interface, two modes, and the loop that drives either.

- `LocalDispatcher` renders a segment in this process (the embedded default on one machine).
- `DeploymentDispatcher` starts a `render-segment` deployment run on a GPU work pool.

`drive_segments` keeps at most `max_in_flight` runs going, never re-renders a segment whose record
exists, resubmits crashed or lost runs (Prefect retries do not cover Crashed) up to
`max_attempts`, treats a run whose heartbeat stops as lost, and fails the job at once, naming the
segment, when a segment fails for a reason a retry would not fix.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

RunState = Literal["pending", "running", "completed", "failed", "crashed", "cancelled"]
# Seconds between two polls of in-flight deployment runs.
DEFAULT_POLL_SECONDS = 2.0


@dataclass(frozen=True)
class SegmentRun:
    segment: int
    attempt: int
    state: RunState = "pending"
    message: str = ""
    flow_run_id: str | None = None


class SegmentJobFailed(RuntimeError):
    """A segment failed in a way a retry would not fix, or ran out of attempts."""


class Dispatcher(Protocol):
    def submit(self, segment: int, attempt: int) -> SegmentRun: ...

    def poll(self, run: SegmentRun) -> SegmentRun: ...

    def cancel(self, run: SegmentRun, reason: str) -> None: ...

    def mark_lost(self, run: SegmentRun, reason: str) -> None: ...


@dataclass
class LocalDispatcher:
    """Runs `render(segment, attempt)` right away in this process; errors fail the segment."""

    render: Callable[[int, int], None]

    def submit(self, segment: int, attempt: int) -> SegmentRun:
        try:
            self.render(segment, attempt)
        except Exception as exc:  # the segment's own error: reported, not retried
            return SegmentRun(segment, attempt, "failed", f"{type(exc).__name__}: {exc}")
        return SegmentRun(segment, attempt, "completed")

    def poll(self, run: SegmentRun) -> SegmentRun:
        return run

    def cancel(self, run: SegmentRun, reason: str) -> None:
        """Nothing runs in the background locally."""

    def mark_lost(self, run: SegmentRun, reason: str) -> None:
        """A local run cannot be lost without this process."""


@dataclass
class DeploymentDispatcher:
    """Starts one deployment run per segment attempt and follows its state through the API."""

    deployment: str
    parameters: Callable[[int, int], dict]
    job_id: str
    work_queue_name: str | None = None
    extra_tags: tuple[str, ...] = ()

    def submit(self, segment: int, attempt: int) -> SegmentRun:
        from prefect.deployments import run_deployment

        flow_run = run_deployment(
            self.deployment,
            parameters=self.parameters(segment, attempt),
            timeout=0,
            idempotency_key=f"{self.job_id}:segment-{segment}:attempt-{attempt}",
            work_queue_name=self.work_queue_name,
            tags=[f"job:{self.job_id}", f"segment:{segment}", *self.extra_tags],
            flow_run_name=f"{self.job_id}-segment-{segment}-try-{attempt}",
            as_subflow=True,
        )
        return SegmentRun(segment, attempt, _state(flow_run.state), flow_run_id=str(flow_run.id))

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


def _state(state) -> RunState:
    if state is None:
        return "pending"
    name = state.type.value
    return {
        "COMPLETED": "completed",
        "FAILED": "failed",
        "CRASHED": "crashed",
        "CANCELLED": "cancelled",
        "CANCELLING": "cancelled",
        "RUNNING": "running",
    }.get(name, "pending")


@dataclass
class _Watch:
    """When this run's heartbeat last changed, on this process's clock (immune to clock skew)."""

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
    poll_seconds: float = DEFAULT_POLL_SECONDS,
    on_progress: Callable[[int, int], None] = lambda done, total: None,
    log: Callable[[str], None] = print,
) -> dict[int, int]:
    """Run every segment not yet done; return the number of attempts each one took.

    Raises SegmentJobFailed when a segment fails for its own reasons (no retry), or crashes,
    is lost or is cancelled `max_attempts` times. In-flight runs are cancelled first.
    """
    total = len(segments)
    done = {s for s in segments if is_done(s)}
    if done:
        log(f"{len(done)} of {total} segments already rendered: not rendering them again")
    queue = deque(s for s in segments if s not in done)
    attempts: dict[int, int] = {}
    in_flight: dict[int, SegmentRun] = {}
    watches: dict[int, _Watch] = {}
    on_progress(len(done), total)

    def fail(message: str) -> None:
        for run in in_flight.values():
            dispatcher.cancel(run, f"job failed: {message}")
        raise SegmentJobFailed(message)

    def retry_or_fail(run: SegmentRun, why: str) -> None:
        if attempts[run.segment] >= max_attempts:
            fail(f"segment {run.segment} {why} {attempts[run.segment]} times (max_attempts={max_attempts}); "
                 f"last: {run.message or 'no message'}")
        log(f"segment {run.segment} {why} on attempt {run.attempt}: resubmitting ({run.message})")
        queue.appendleft(run.segment)

    while queue or in_flight:
        while queue and len(in_flight) < max_in_flight:
            segment = queue.popleft()
            attempts[segment] = attempts.get(segment, 0) + 1
            in_flight[segment] = dispatcher.submit(segment, attempts[segment])
            watches[segment] = _Watch()
        for segment, run in list(in_flight.items()):
            run = in_flight[segment] = dispatcher.poll(run)
            if run.state == "pending":
                watches[segment] = _Watch()  # a queued run is not lost: the clock starts when it runs
                continue
            if run.state == "running":
                beat, watch = heartbeat(segment), watches[segment]
                if beat != watch.beat:
                    watches[segment] = _Watch(beat)
                elif time.monotonic() - watch.changed_at > stale_after:
                    dispatcher.mark_lost(run, f"no heartbeat for {stale_after:.0f} s: worker lost")
                    del in_flight[segment]
                    retry_or_fail(replace(run, message=f"no heartbeat for {stale_after:.0f} s"), "was lost")
                continue
            del in_flight[segment]
            if is_done(segment):  # a record exists: done, whatever the run's final state says
                done.add(segment)
                on_progress(len(done), total)
            elif run.state == "failed":
                fail(f"segment {segment} failed: {run.message}")
            elif run.state == "completed":
                retry_or_fail(replace(run, message="completed without writing its record"), "left no record")
            else:
                retry_or_fail(run, "crashed" if run.state == "crashed" else "was cancelled")
        if in_flight:
            time.sleep(poll_seconds)
    return attempts
