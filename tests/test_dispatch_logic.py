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
    lost: list = field(default_factory=list)
    beats: dict = field(default_factory=dict)

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
        if state == "running":
            self.beats[run.segments[0]] = self.beats.get(run.segments[0], 0)
        return replace(run, state=state, message=f"scripted {state}")

    def cancel(self, run, reason):
        self.cancelled.append((run.segments[0], reason))

    def mark_lost(self, run, reason):
        self.lost.append((run.segments[0], reason))


def drive(d, segments, **kw):
    args = dict(is_done=lambda s: s in d.records, heartbeat=lambda s: d.beats.get(s), max_in_flight=2,
                max_attempts=3, stale_after=1e9, poll_seconds=0, log=lambda m: None)
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


def test_lost_worker_is_detected_by_a_silent_heartbeat():
    d = Scripted({(0, 1): ["running"], (0, 2): ["completed"]})
    attempts = drive(d, [0], stale_after=0.0)
    assert attempts[0] == 2 and d.lost and "no heartbeat" in d.lost[0][1] and not d.cancelled


def test_run_claimed_by_a_worker_that_dies_is_lost_and_resubmitted():
    # Pending: a worker took the run and started its process, then died before it ran.
    d = Scripted({(0, 1): ["pending"], (0, 2): ["scheduled", "pending", "running", "completed"]})
    resubmitted = []
    attempts = drive(d, [0], stale_after=0.0, on_resubmit=resubmitted.append)
    assert attempts[0] == 2 and 0 in d.records
    assert d.lost == [(0, "claimed by a worker but not started for 0 s: worker lost")]
    assert resubmitted == [[0]]


def test_run_waiting_for_a_worker_is_never_lost():
    d = Scripted({(0, 1): ["scheduled"] * 50 + ["completed"]})
    attempts = drive(d, [0], stale_after=0.0)
    assert attempts == {0: 1} and not d.lost


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
        drive_segments([0, 1, 2, 3], LocalDispatcher(render), is_done=records.__contains__, heartbeat=lambda s: None,
                       max_in_flight=1, max_attempts=3, stale_after=60, poll_seconds=0, log=lambda m: None)
    assert calls == [0, 1, 2]


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


def test_lost_group_is_detected_and_failure_names_the_first_unfinished_segment():
    d = Scripted({(0, 1): [("partial", 1)], (1, 2): ["completed"]})
    attempts = drive(d, [0, 1], per_run=2, stale_after=0.0)
    assert attempts == {0: 1, 1: 2} and d.lost
    d = Scripted({(0, 1): [("partial", 1), "failed"]})
    with pytest.raises(SegmentJobFailed, match="segment 1 failed"):
        drive(d, [0, 1, 2], per_run=3)
    assert d.submitted == [((0, 1, 2), 1)]


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
