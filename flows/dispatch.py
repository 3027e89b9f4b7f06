"""Segment dispatch: one interface, two modes, and the state machine that drives either.

- `LocalDispatcher` renders segments in this process (the embedded default on one machine).
- `DeploymentDispatcher` starts a `render-segment` deployment run on a GPU work pool.

A run renders one or more consecutive segments in turn with the pipeline loaded once (a render
farm's chunk size). Each segment writes its own record as it finishes, so a crash or a lost
worker costs only the segments that run had not finished.

What Prefect does and what is left here:
- A worker that dies is Prefect's to detect: segment runs send flow-run heartbeats and an
  automation created by `setup-cluster` (`flows.liveness`) marks a run Crashed when it falls
  silent, whether it was running or still starting (Pending).
- Cancelling a job is Prefect's too: segment runs are subflow runs of the job, and the server
  cancels the subflow runs of a cancelled flow run.
- Prefect does not resubmit Crashed runs (retries cover Failed only) and knows nothing of
  segments, so `drive_segments` resubmits the unfinished segments of crashed runs (never a
  segment whose record exists), caps the attempts per segment, and fails the job at once, naming
  the segment, when a segment fails for a reason a retry would not fix.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

RunState = Literal["scheduled", "pending", "running", "completed", "failed", "crashed", "cancelled"]
ACTIVE_STATES = ("scheduled", "pending", "running")
# Seconds between two polls of in-flight deployment runs.
DEFAULT_POLL_SECONDS = 2.0
# The state a segment run waits in for a GPU worker: Scheduled to the workers, but not named
# "Scheduled", the only name Prefect marks Late, so a run queued behind busy GPUs never shows Late.
QUEUED_STATE_NAME = "Queued"


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


@dataclass
class LocalDispatcher:
    """Runs `render(segments, attempt)` right away in this process; errors fail the run, a
    Crashed run (its GPU processes lost) is resubmitted."""

    render: Callable[[tuple[int, ...], int], None]

    def submit(self, segments: tuple[int, ...], attempt: int) -> SegmentRun:
        from prefect.exceptions import CrashedRun

        try:
            self.render(segments, attempt)
        except CrashedRun as exc:  # lost GPU processes (a multi-GPU run): resubmitted
            return SegmentRun(segments, attempt, "crashed", str(exc))
        except Exception as exc:  # the segment's own error: reported, not retried
            return SegmentRun(segments, attempt, "failed", f"{type(exc).__name__}: {exc}")
        return SegmentRun(segments, attempt, "completed")

    def poll(self, run: SegmentRun) -> SegmentRun:
        return run

    def cancel(self, run: SegmentRun, reason: str) -> None:
        """Nothing runs in the background locally."""


@dataclass
class DeploymentDispatcher:
    """Starts one deployment run per group of segments and attempt (a subflow run of the job), and
    follows its state through the API."""

    deployment: str
    parameters: Callable[[tuple[int, ...], int], dict]
    job_id: str
    work_queue_name: str | None = None
    # Scopes the runs' idempotency keys to this run of the job: the same job id rendered again
    # (into another store, or after `jobs clean`) must start new runs, not get the old ones back.
    run_key: str = field(default_factory=lambda: _current_run_key())

    def submit(self, segments: tuple[int, ...], attempt: int) -> SegmentRun:
        """Queue a run of the deployment for `segments`, as a subflow run of the job (what
        `run_deployment` does, but in the `QUEUED_STATE_NAME` state)."""
        from prefect import get_client
        from prefect.states import Scheduled

        name = segments_name(segments)
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name(self.deployment)
            flow_run = client.create_flow_run_from_deployment(
                deployment.id,
                parameters=self.parameters(segments, attempt),
                state=Scheduled(name=QUEUED_STATE_NAME),
                name=f"{self.job_id}-{name}-try-{attempt}",
                tags=[f"job:{self.job_id}", *(f"segment:{s}" for s in segments), f"attempt:{attempt}"],
                idempotency_key=f"{self.job_id}:{self.run_key}:{name}:attempt-{attempt}",
                parent_task_run_id=_subflow_link(client, self.deployment, f"{name}-attempt-{attempt}"),
                work_queue_name=self.work_queue_name,
            )
        return SegmentRun(segments, attempt, run_state(flow_run.state), flow_run_id=str(flow_run.id))

    def poll(self, run: SegmentRun) -> SegmentRun:
        from prefect import get_client

        with get_client(sync_client=True) as client:
            flow_run = client.read_flow_run(run.flow_run_id)
        message = (flow_run.state.message or "") if flow_run.state else ""
        return replace(run, state=run_state(flow_run.state), message=message)

    def cancel(self, run: SegmentRun, reason: str) -> None:
        from prefect import get_client
        from prefect.states import Cancelling

        with get_client(sync_client=True) as client:
            client.set_flow_run_state(run.flow_run_id, Cancelling(message=reason), force=True)


def _current_run_key() -> str:
    """The current flow run's id, or (outside a flow run) a fresh random key."""
    import uuid

    from prefect.runtime import flow_run

    return str(flow_run.id or uuid.uuid4())


def _subflow_link(client, deployment: str, key: str):
    """A task run in the current flow run standing for a deployment run started from it (its
    `parent_task_run_id`): the UI draws the run inside the job, and the server cancels it with the
    job. Outside a flow run, None."""
    from prefect import Task
    from prefect.context import FlowRunContext
    from prefect.states import Pending

    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return None
    link = Task(name=deployment, fn=lambda: None)
    return client.create_task_run(link, context.flow_run.id, dynamic_key=key, state=Pending()).id


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


def run_state(state) -> RunState:
    """A Prefect state as a run state (Late and AwaitingRetry are scheduled; Cancelling is cancelled)."""
    if state is None:
        return "scheduled"
    return {
        "COMPLETED": "completed",
        "FAILED": "failed",
        "CRASHED": "crashed",
        "CANCELLED": "cancelled",
        "CANCELLING": "cancelled",
        "RUNNING": "running",
        "PENDING": "pending",
    }.get(state.type.value, "scheduled")


@dataclass
class SegmentDriver:
    """The dispatch of one job's segments: a queue of groups, the runs in flight, attempts."""

    dispatcher: Dispatcher
    is_done: Callable[[int], bool]
    max_in_flight: int
    max_attempts: int
    on_progress: Callable[[int, int], None]
    on_resubmit: Callable[[list[int]], None]
    log: Callable[[str], None]
    total: int = 0
    done: set[int] = field(default_factory=set)
    queue: deque = field(default_factory=deque)
    in_flight: dict[tuple[int, ...], SegmentRun] = field(default_factory=dict)
    attempts: dict[int, int] = field(default_factory=dict)

    def submit_ready(self) -> None:
        """Start queued groups while fewer than `max_in_flight` runs are going."""
        while self.queue and len(self.in_flight) < self.max_in_flight:
            group = self.queue.popleft()
            for segment in group:
                self.attempts[segment] = self.attempts.get(segment, 0) + 1
            run = self.in_flight[group] = self.dispatcher.submit(group, max(self.attempts[s] for s in group))
            if run.state not in ACTIVE_STATES:  # rendered during submit (in-process): count it now
                self.settle(group, run)

    def settle(self, group: tuple[int, ...], run: SegmentRun) -> None:
        """Act on a run that has ended: its recorded segments are done, whatever the run's state;
        the rest are failed (its own error: the job fails) or resubmitted (crashed, cancelled, or
        completed without a record)."""
        del self.in_flight[group]
        remaining = self.collect(group)
        if not remaining:
            return
        if run.state == "failed":  # a run renders its segments in order and stops at the first failure
            self.fail(f"segment {remaining[0]} failed: {run.message}")
        why = {"crashed": "crashed", "cancelled": "was cancelled", "completed": "left no record"}[run.state]
        for segment in remaining:
            if self.attempts[segment] >= self.max_attempts:
                self.fail(f"segment {segment} {why} {self.attempts[segment]} times (max_attempts={self.max_attempts}); "
                          f"last: {run.message or 'no message'}")
        self.log(f"{segments_label(tuple(remaining))} {why} on attempt {run.attempt}: resubmitting "
                 f"({run.message or 'no message'})")
        self.on_resubmit(remaining)
        self.queue.appendleft(tuple(remaining))

    def collect(self, group: tuple[int, ...]) -> list[int]:
        """Count the group's newly recorded segments as done; return those still unfinished."""
        fresh = [s for s in group if s not in self.done and self.is_done(s)]
        if fresh:
            self.done.update(fresh)
            self.on_progress(len(self.done), self.total)
        return [s for s in group if s not in self.done]

    def fail(self, message: str) -> None:
        for run in self.in_flight.values():
            self.dispatcher.cancel(run, f"job failed: {message}")
        raise SegmentJobFailed(message)


def drive_segments(
    segments: list[int],
    dispatcher: Dispatcher,
    *,
    is_done: Callable[[int], bool],
    max_in_flight: int,
    max_attempts: int,
    per_run: int = 1,
    poll_seconds: float = DEFAULT_POLL_SECONDS,
    on_progress: Callable[[int, int], None] = lambda done, total: None,
    on_poll: Callable[[list[int]], None] = lambda running: None,
    on_resubmit: Callable[[list[int]], None] = lambda segments: None,
    log: Callable[[str], None] = print,
) -> dict[int, int]:
    """Run every segment not yet done, `per_run` consecutive segments per run; return the number of
    attempts each segment took. `on_progress(done, total)` is called when the count of segments
    done changes, `on_poll(running)` after every round of polls with the unfinished segments of
    the runs going.

    Raises SegmentJobFailed when a segment fails for its own reasons (no retry), or crashes, is
    cancelled or ends without its record `max_attempts` times. In-flight runs are cancelled first.
    """
    if per_run < 1:
        raise ValueError(f"per_run must be at least 1, got {per_run}")
    driver = SegmentDriver(dispatcher, is_done, max_in_flight, max_attempts, on_progress, on_resubmit, log,
                           total=len(segments))
    driver.done = {s for s in segments if is_done(s)}
    if driver.done:
        log(f"{len(driver.done)} of {len(segments)} segments already rendered: not rendering them again")
    todo = [s for s in segments if s not in driver.done]
    driver.queue.extend(tuple(todo[i: i + per_run]) for i in range(0, len(todo), per_run))
    on_progress(len(driver.done), len(segments))
    while driver.queue or driver.in_flight:
        driver.submit_ready()
        for group, run in list(driver.in_flight.items()):
            run = driver.in_flight[group] = dispatcher.poll(run)
            if run.state in ACTIVE_STATES:
                driver.collect(group)  # progress while the run goes on
            else:
                driver.settle(group, run)
        on_poll([s for group, run in driver.in_flight.items() if run.state == "running"
                 for s in group if s not in driver.done])
        if driver.in_flight:
            time.sleep(poll_seconds)
    return driver.attempts
