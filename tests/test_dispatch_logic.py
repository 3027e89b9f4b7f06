"""The segment dispatch loop, driven by a scripted dispatcher (pure logic, no Prefect)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest

from flows.dispatch import LocalDispatcher, SegmentJobFailed, SegmentRun, drive_segments


@dataclass
class Scripted:
    """Each (first segment, attempt) follows a scripted list of states; 'completed' writes the records
    of all the run's segments, ('partial', k) the records of its first k segments and runs on."""

    script: dict
    records: set = field(default_factory=set)
    submitted: list = field(default_factory=list)
    cancelled: list = field(default_factory=list)

    def submit(self, segments, attempt):
        self.submitted.append((segments[0] if len(segments) == 1 else segments, attempt))
        return SegmentRun(segments, attempt, "scheduled", flow_run_id=f"{segments}-{attempt}")

    def poll(self, run):
        states = self.script.get((run.segments[0], run.attempt), ["completed"])
        state = states.pop(0) if len(states) > 1 else states[0]
        if state == "completed":
            self.records.update(run.segments)
        if isinstance(state, tuple):
            self.records.update(run.segments[: state[1]])
            state = "running"
        return replace(run, state=state, message=f"scripted {state}")

    def cancel(self, run, reason):
        self.cancelled.append((run.segments[0], reason))


def drive(d, segments, **kw):
    args = dict(is_done=lambda s: s in d.records, max_in_flight=2, max_attempts=3, poll_seconds=0,
                log=lambda m: None)
    args.update(kw)
    return drive_segments(segments, d, **args)


def test_all_segments_complete_with_bounded_in_flight():
    d = Scripted({})
    attempts = drive(d, [0, 1, 2, 3, 4])
    assert sorted(d.records) == [0, 1, 2, 3, 4] and set(attempts.values()) == {1}


def test_done_segments_are_not_rendered_again():
    d = Scripted({})
    d.records.update({1, 3})
    drive(d, [0, 1, 2, 3])
    assert sorted(s for s, _ in d.submitted) == [0, 2]


def test_crash_is_resubmitted_and_failure_is_not():
    d = Scripted({(1, 1): ["running", "crashed"], (1, 2): ["completed"]})
    attempts = drive(d, [0, 1, 2])
    assert attempts[1] == 2 and 1 in d.records
    d = Scripted({(1, 1): ["failed"]})
    with pytest.raises(SegmentJobFailed, match="segment 1 failed: scripted failed"):
        drive(d, [0, 1, 2])
    assert (1, 2) not in d.submitted  # no retry loop for a failure


def test_attempts_are_capped():
    d = Scripted({(0, a): ["crashed"] for a in (1, 2, 3)})
    with pytest.raises(SegmentJobFailed, match=r"segment 0 crashed 3 times \(max_attempts=3\)"):
        drive(d, [0, 1])


def test_crashed_run_that_wrote_its_record_counts_as_done():
    class LateRecord(Scripted):
        def poll(self, run):
            run = super().poll(run)
            self.records.update(run.segments)  # the record appeared: Crashed was not final (P3)
            return run

    late = LateRecord({(0, 1): ["crashed"]})
    attempts = drive(late, [0])
    assert attempts == {0: 1}


def test_run_marked_crashed_after_it_was_claimed_is_resubmitted():
    # Pending, then Crashed: the lost-run automation marks a run whose worker died while it started.
    d = Scripted({(0, 1): ["pending", "pending", "crashed"], (0, 2): ["scheduled", "pending", "running", "completed"]})
    resubmitted = []
    attempts = drive(d, [0], on_resubmit=resubmitted.append)
    assert attempts[0] == 2 and 0 in d.records and resubmitted == [[0]]


def test_runs_waiting_or_starting_are_left_alone():
    d = Scripted({(0, 1): ["scheduled"] * 30 + ["pending"] * 30 + ["running"] * 30 + ["completed"]})
    assert drive(d, [0]) == {0: 1} and not d.cancelled


def test_failure_cancels_runs_in_flight():
    d = Scripted({(0, 1): ["running"], (1, 1): ["failed"]})
    with pytest.raises(SegmentJobFailed, match="segment 1"):
        drive(d, [0, 1])
    assert [s for s, _ in d.cancelled] == [0]


def test_local_dispatcher_reports_errors_as_failures():
    calls, records = [], set()

    def render(segments, attempt):
        (segment,) = segments
        calls.append(segment)
        if segment == 2:
            raise ValueError("pose frame 17 is corrupt")
        records.add(segment)

    with pytest.raises(SegmentJobFailed, match="segment 2 failed: ValueError: pose frame 17 is corrupt"):
        drive_segments([0, 1, 2, 3], LocalDispatcher(render), is_done=records.__contains__,
                       max_in_flight=1, max_attempts=3, poll_seconds=0, log=lambda m: None)
    assert calls == [0, 1, 2]


def test_in_process_segments_count_as_done_as_each_finishes():
    """In-process rendering happens inside `submit`: the job's count of segments done moves after
    each segment, not once all of them are rendered."""
    records, seen = set(), []

    def render(segments, attempt):
        seen.append(("render", segments[0], len(records)))
        records.update(segments)

    drive_segments([0, 1, 2], LocalDispatcher(render), is_done=records.__contains__, max_in_flight=4,
                   max_attempts=3, poll_seconds=0, log=lambda m: None,
                   on_progress=lambda done, total: seen.append(("done", done, total)))
    assert seen == [("done", 0, 3), ("render", 0, 0), ("done", 1, 3), ("render", 1, 1), ("done", 2, 3),
                    ("render", 2, 2), ("done", 3, 3)]


def test_runs_take_consecutive_segments_and_skip_done_ones():
    d = Scripted({})
    d.records.add(2)
    attempts = drive(d, [0, 1, 2, 3, 4, 5], per_run=2)
    assert d.submitted == [((0, 1), 1), ((3, 4), 1), (5, 1)]
    assert sorted(d.records) == [0, 1, 2, 3, 4, 5] and set(attempts.values()) == {1}


def test_crashed_run_resubmits_only_its_unfinished_segments():
    # The run of 0-2 finishes segment 0, then its worker crashes: 1 and 2 go again, 0 does not.
    d = Scripted({(0, 1): [("partial", 1), "crashed"]})
    progress = []
    attempts = drive(d, [0, 1, 2], per_run=3, on_progress=lambda done, total: progress.append(done))
    assert d.submitted == [((0, 1, 2), 1), ((1, 2), 2)]
    assert attempts == {0: 1, 1: 2, 2: 2}
    assert progress == [0, 1, 3]  # segment 0 counted while its run was still going


def test_run_ending_without_records_and_failure_naming_the_first_unfinished_segment():
    d = Scripted({(0, 1): [("partial", 1), "cancelled"], (1, 2): ["completed"]})
    attempts = drive(d, [0, 1], per_run=2)
    assert attempts == {0: 1, 1: 2}
    d = Scripted({(0, 1): [("partial", 1), "failed"]})
    with pytest.raises(SegmentJobFailed, match="segment 1 failed"):
        drive(d, [0, 1, 2], per_run=3)
    assert d.submitted == [((0, 1, 2), 1)]


def test_lost_run_automation_watches_claimed_and_running_segment_runs():
    from flows.liveness import MIN_LOST_AFTER_SECONDS, lost_run_automation

    automation = lost_run_automation("0000-deployment", 120)
    trigger = automation.trigger
    assert trigger.posture == "Proactive" and trigger.within.total_seconds() == 120
    assert {"prefect.flow-run.Pending", "prefect.flow-run.Running", "prefect.flow-run.heartbeat"} <= trigger.after
    assert trigger.after <= trigger.expect and "prefect.flow-run.Completed" in trigger.expect
    assert "prefect.flow-run.Completed" not in trigger.after  # a finished run is never armed again
    assert trigger.match_related.model_dump() == {"prefect.resource.id": "prefect.deployment.0000-deployment"}
    assert automation.actions[0].state == "CRASHED"
    with pytest.raises(ValueError, match=f"at least {MIN_LOST_AFTER_SECONDS}"):
        lost_run_automation("x", MIN_LOST_AFTER_SECONDS - 1)


def test_segments_per_run_policy():
    from flows.dispatch import segments_per_run

    assert segments_per_run(3, 10, 4) == 3  # as requested
    assert segments_per_run(0, 8, 4) == 2  # auto: spread evenly over the runs in flight
    assert segments_per_run(0, 3, 4) == 1
    assert segments_per_run(0, 100, 2) == 4  # capped: a lost run costs at most a few segments
    with pytest.raises(ValueError, match="per_run"):
        drive(Scripted({}), [0], per_run=0)


def test_stage_retries_are_for_io_errors_only():
    from prefect.states import Failed

    from flows.render import _retry_io
    from flows.stages import JobInputError
    from pose.errors import NoPersonError

    def failed(exc):
        return Failed(data=exc)

    assert _retry_io(None, None, failed(ConnectionResetError("reset by peer")))
    assert _retry_io(None, None, failed(TimeoutError("slow store")))
    for exc in (JobInputError("driving video not found"), NoPersonError("nobody"), FileNotFoundError("x"),
                KeyError("bug")):
        assert not _retry_io(None, None, failed(exc)), exc
