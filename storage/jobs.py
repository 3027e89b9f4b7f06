"""Each job's status, listing jobs, and deleting old ones (`controlnext-video jobs list|clean`).

The render flow writes `jobs/<id>/status.json` when a run starts and when it ends. A job folder
without one (its run was killed before it wrote any) counts as `unknown`, dated by its request.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import Literal, get_args

from .layout import JOBS_PREFIX, JobLayout, check_job_id
from .store import ArtifactNotFoundError, ArtifactStore

logger = logging.getLogger(__name__)

JobState = Literal["running", "succeeded", "failed", "cancelled", "unknown"]
JOB_STATES: tuple[str, ...] = get_args(JobState)
#: States after which a job does not change unless it is run again (what `cleanup_jobs` deletes by default).
FINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class JobStatus:
    job_id: str
    state: JobState
    updated_at: datetime | None
    message: str = ""

    def to_dict(self) -> dict:
        data = asdict(self)
        data["updated_at"] = self.updated_at.isoformat() if self.updated_at else None
        return data


def write_status(store: ArtifactStore, job_id: str, state: JobState, message: str = "") -> JobStatus:
    """Record a job's state (atomically, replacing the last one)."""
    if state not in JOB_STATES:
        raise ValueError(f"job state must be one of {', '.join(JOB_STATES)}, got {state!r}")
    status = JobStatus(job_id, state, utc_now(), message)
    store.write_json(JobLayout(job_id).status, status.to_dict())
    return status


def read_status(store: ArtifactStore, job_id: str) -> JobStatus:
    layout = JobLayout(job_id)
    try:
        data = store.read_json(layout.status)
        return JobStatus(job_id, data["state"], datetime.fromisoformat(data["updated_at"]), data.get("message", ""))
    except ArtifactNotFoundError:
        pass
    except (ValueError, KeyError, TypeError) as exc:
        logger.warning("%s is unreadable (%s): job counted as unknown", store.url(layout.status), exc)
    try:
        written = store.modified(layout.request)
    except ArtifactNotFoundError:
        written = None
    return JobStatus(job_id, "unknown", written)


def list_jobs(store: ArtifactStore) -> list[JobStatus]:
    """Every job folder in the store, oldest update first (undated ones last)."""
    jobs = []
    for job_id in store.children(JOBS_PREFIX):
        try:
            check_job_id(job_id)
        except ValueError:
            logger.warning("ignoring %s: not a job id", store.url(f"{JOBS_PREFIX}/{job_id}"))
            continue
        jobs.append(read_status(store, job_id))
    return sorted(jobs, key=lambda s: (s.updated_at is None, s.updated_at or datetime.max.replace(tzinfo=timezone.utc),
                                       s.job_id))


def cleanup_jobs(
    store: ArtifactStore,
    older_than: timedelta,
    *,
    states: Collection[str] = FINAL_STATES,
    dry_run: bool = False,
    now: datetime | None = None,
) -> list[str]:
    """Delete jobs last updated more than ``older_than`` ago whose state is in ``states``.

    By default only finished jobs go; running ones stay whatever their age, and so do jobs with no
    date. Returns the ids deleted (or, with ``dry_run``, that would be).
    """
    if older_than < timedelta(0):
        raise ValueError(f"older_than must not be negative, got {older_than}")
    cutoff = (now or utc_now()) - older_than
    doomed = [job.job_id for job in list_jobs(store)
              if job.state in states and job.updated_at is not None and job.updated_at < cutoff]
    for job_id in doomed:
        if dry_run:
            logger.info("would delete job %s", job_id)
            continue
        count = store.delete_prefix(JobLayout(job_id).prefix)
        logger.info("deleted job %s (%d artifacts)", job_id, count)
    return doomed
