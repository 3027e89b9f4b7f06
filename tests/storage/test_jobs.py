"""Job status records, listing and cleaning up old jobs."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from storage import ArtifactStore, JobLayout, cleanup_jobs, list_jobs, read_status, write_status

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)


def _job(store: ArtifactStore, job_id: str, state: str, when: datetime) -> None:
    store.write_json(JobLayout(job_id).request, {})
    store.write_json(JobLayout(job_id).status, dict(job_id=job_id, state=state, updated_at=when.isoformat(),
                                                    message=""))


def test_status_round_trip(tmp_path) -> None:
    store = ArtifactStore(tmp_path)
    written = write_status(store, "shot-1", "failed", "segment 3 failed: weights")
    assert read_status(store, "shot-1") == written and written.updated_at.tzinfo is not None
    with pytest.raises(ValueError, match="job state must be one of"):
        write_status(store, "shot-1", "exploded")
    store.write_text(JobLayout("shot-2").status, "{not json")
    assert read_status(store, "shot-2").state == "unknown"


def test_list_and_clean_up_old_jobs(tmp_path) -> None:
    store = ArtifactStore(tmp_path)
    _job(store, "old-done", "succeeded", T0)
    _job(store, "old-failed", "failed", T0 + timedelta(hours=1))
    _job(store, "old-running", "running", T0)
    _job(store, "new-done", "succeeded", T0 + timedelta(days=10))
    store.write_json(JobLayout("no-status").request, {})  # killed before its first status
    (tmp_path / "jobs" / ".hidden").mkdir()

    jobs = list_jobs(store)
    assert [(j.job_id, j.state) for j in jobs] == [
        ("old-done", "succeeded"),
        ("old-running", "running"),
        ("old-failed", "failed"),
        ("new-done", "succeeded"),
        ("no-status", "unknown"),  # dated by its request.json: written just now
    ]
    now = T0 + timedelta(days=11)
    assert cleanup_jobs(store, timedelta(days=7), now=now, dry_run=True) == ["old-done", "old-failed"]
    assert len(list_jobs(store)) == 5
    assert cleanup_jobs(store, timedelta(days=7), now=now) == ["old-done", "old-failed"]
    assert [j.job_id for j in list_jobs(store)] == ["old-running", "new-done", "no-status"]
    assert store.list("jobs/old-done") == [] and store.exists(JobLayout("old-running").status)
    # Unknown jobs only when asked, by the age of their request.json.
    later = datetime.now(timezone.utc) + timedelta(days=30)
    assert cleanup_jobs(store, timedelta(days=7), states={"unknown"}, now=later) == ["no-status"]
    with pytest.raises(ValueError, match="older_than must not be negative"):
        cleanup_jobs(store, timedelta(days=-1))

