from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from storage import (
    ArtifactStore,
    JobLayout,
    JobManifest,
    cleanup_jobs,
    list_jobs,
    load_manifest,
    save_manifest,
)

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)


def _job(store: ArtifactStore, job_id: str, status: str, updated: datetime) -> JobManifest:
    layout = JobLayout(job_id)
    manifest = JobManifest.new(job_id, now=updated - timedelta(hours=1))
    manifest = manifest.with_input("driving", store.write_bytes(layout.input("driving.mp4"), b"clip"), now=updated)
    store.write_json(layout.request, {"job_id": job_id})
    manifest = manifest.with_status(status, now=updated)  # type: ignore[arg-type]
    save_manifest(store, manifest)
    return manifest


def test_manifest_records_inputs_stages_outputs_and_round_trips(store: ArtifactStore) -> None:
    layout = JobLayout("job-1")
    ref = store.write_bytes(layout.input("ref.png"), b"png bytes")
    manifest = JobManifest.new("job-1", now=T0).with_input("reference", ref, now=T0).with_status("running", now=T0)
    manifest = manifest.start_stage("poses", now=T0)
    manifest = manifest.finish_stage("poses", now=T0 + timedelta(seconds=42))
    manifest = manifest.finish_stage("render", status="failed", message="CUDA out of memory", now=T0 + timedelta(minutes=5))
    out = store.write_bytes(layout.output_file("video.mp4"), b"mp4")
    manifest = manifest.with_output("video", out, now=T0 + timedelta(minutes=6)).with_status("failed", now=T0 + timedelta(minutes=6))
    save_manifest(store, manifest)

    loaded = load_manifest(store, "job-1")
    assert loaded == manifest
    assert loaded.inputs["reference"].sha256 == ref.sha256 == store.sha256(ref.key)
    assert loaded.stages["poses"].seconds == 42
    assert loaded.stages["render"].status == "failed" and loaded.stages["render"].seconds == 0
    assert loaded.created_at == T0 and loaded.updated_at == T0 + timedelta(minutes=6)
    raw = store.read_json(layout.manifest)
    assert raw["inputs"]["reference"] == {"key": ref.key, "sha256": ref.sha256, "size": 9}
    assert raw["created_at"] == "2026-01-01T12:00:00+00:00"


def test_manifest_validation() -> None:
    with pytest.raises(ValueError, match="job status must be one of"):
        JobManifest.new("j", now=T0).with_status("exploded")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finish_stage needs a final status"):
        JobManifest.new("j", now=T0).finish_stage("x", status="running")
    with pytest.raises(ValueError, match="malformed job manifest"):
        JobManifest.from_dict({"job_id": "j"})
    data = JobManifest.new("j", now=T0).to_dict()
    with pytest.raises(ValueError, match="manifest schema 2 is not supported"):
        JobManifest.from_dict({**data, "schema_version": 2})
    with pytest.raises(ValueError, match="has no time zone"):
        JobManifest.from_dict({**data, "created_at": "2026-01-01T12:00:00"})


def test_list_and_clean_up_old_jobs(store: ArtifactStore) -> None:
    _job(store, "old-done", "succeeded", T0)
    _job(store, "old-failed", "failed", T0 + timedelta(hours=1))
    _job(store, "old-running", "running", T0)
    _job(store, "new-done", "succeeded", T0 + timedelta(days=10))
    store.write_json(JobLayout("no-manifest").request, {})  # crashed before its first manifest

    jobs = list_jobs(store)
    assert [(j.job_id, j.status) for j in jobs] == [
        ("old-done", "succeeded"),
        ("old-running", "running"),
        ("old-failed", "failed"),
        ("new-done", "succeeded"),
        ("no-manifest", "unknown"),  # dated by its request.json: written just now
    ]
    now = T0 + timedelta(days=11)
    assert cleanup_jobs(store, timedelta(days=7), now=now, dry_run=True) == ["old-done", "old-failed"]
    assert len(list_jobs(store)) == 5
    assert cleanup_jobs(store, timedelta(days=7), now=now) == ["old-done", "old-failed"]
    assert [j.job_id for j in list_jobs(store)] == ["old-running", "new-done", "no-manifest"]
    assert store.list("jobs/old-done") == [] and store.exists(JobLayout("old-running").manifest)
    # Unknown jobs only when asked, by the age of their request.json.
    later = datetime.now(timezone.utc) + timedelta(days=30)
    assert cleanup_jobs(store, timedelta(days=7), statuses={"unknown"}, now=later) == ["no-manifest"]
    with pytest.raises(ValueError, match="older_than must not be negative"):
        cleanup_jobs(store, timedelta(days=-1))


def test_saved_manifest_never_holds_the_store_secret(s3_endpoint: str) -> None:
    from .conftest import S3_BUCKET, S3_SECRET, s3_options

    store = ArtifactStore(f"s3://{S3_BUCKET}/manifest-secret", storage_options=s3_options(s3_endpoint))
    leaky = JobManifest.new("j", now=T0).finish_stage("upload", status="failed", message=f"auth {S3_SECRET} refused")
    save_manifest(store, leaky)
    assert S3_SECRET not in store.read_text(JobLayout("j").manifest)
    assert load_manifest(store, "j").stages["upload"].message == "auth *** refused"
