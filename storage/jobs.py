"""Listing jobs and deleting old ones."""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta

from .layout import JOBS_PREFIX, JobLayout, check_job_id
from .manifest import FINAL_STATUSES, load_manifest, utc_now
from .store import ArtifactNotFoundError, ArtifactStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobSummary:
    job_id: str
    status: str
    """The manifest's status, or ``"unknown"`` for a job folder without a readable manifest."""
    created_at: datetime | None
    updated_at: datetime | None
    """Last manifest update; for a job without one, when its request.json was written (or None)."""


def list_jobs(store: ArtifactStore) -> list[JobSummary]:
    """Every job folder in the store, oldest update first (undated ones last)."""
    summaries = []
    for job_id in store.children(JOBS_PREFIX):
        try:
            check_job_id(job_id)
        except ValueError:
            logger.warning("ignoring %s: not a job id", store.url(f"{JOBS_PREFIX}/{job_id}"))
            continue
        summaries.append(_summary(store, job_id))
    return sorted(summaries, key=lambda s: (s.updated_at is None, s.updated_at or datetime.max, s.job_id))


def cleanup_jobs(
    store: ArtifactStore,
    older_than: timedelta,
    *,
    statuses: Collection[str] = FINAL_STATUSES,
    dry_run: bool = False,
    now: datetime | None = None,
) -> list[str]:
    """Delete jobs whose last update is older than ``older_than`` and whose status is in ``statuses``.

    By default only finished jobs (succeeded, failed, cancelled) go; running and pending ones stay
    whatever their age, and so do jobs with no date at all. Pass ``statuses={..., "unknown"}`` to
    include job folders without a manifest (dated by their request.json). Returns the ids deleted
    (or, with ``dry_run``, that would be).
    """
    if older_than < timedelta(0):
        raise ValueError(f"older_than must not be negative, got {older_than}")
    cutoff = (now or utc_now()) - older_than
    doomed = [
        job.job_id
        for job in list_jobs(store)
        if job.status in statuses and job.updated_at is not None and job.updated_at < cutoff
    ]
    for job_id in doomed:
        if dry_run:
            logger.info("would delete job %s", job_id)
            continue
        count = store.delete_prefix(JobLayout(job_id).prefix)
        logger.info("deleted job %s (%d artifacts)", job_id, count)
    return doomed


def _summary(store: ArtifactStore, job_id: str) -> JobSummary:
    layout = JobLayout(job_id)
    try:
        manifest = load_manifest(store, job_id)
    except ArtifactNotFoundError:
        pass
    except ValueError as exc:
        logger.warning("%s", exc)
    else:
        return JobSummary(job_id, manifest.status, manifest.created_at, manifest.updated_at)
    try:
        written = store.modified(layout.request)
    except ArtifactNotFoundError:
        written = None
    return JobSummary(job_id, "unknown", written, written)
