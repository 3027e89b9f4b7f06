"""Artifact storage over fsspec URLs: atomic writes, content hashes, the job layout and manifest.

Needs ``pip install 'controlnext-video[storage]'`` (fsspec, and s3fs for ``s3://``); both are
imported when a store is opened, not on import. This package never imports Prefect or the flows.
"""

from .jobs import JobSummary, cleanup_jobs, list_jobs
from .layout import JobLayout, cache_key, check_job_id, new_job_id, safe_name
from .manifest import (
    FINAL_STATUSES,
    FileRecord,
    JobManifest,
    JobStatus,
    StageRecord,
    load_manifest,
    save_manifest,
)
from .store import (
    ArtifactNotFoundError,
    ArtifactRef,
    ArtifactStore,
    ArtifactWriter,
    IntegrityError,
    StoreError,
    check_key,
    sha256_file,
)

__all__ = [
    "FINAL_STATUSES",
    "ArtifactNotFoundError",
    "ArtifactRef",
    "ArtifactStore",
    "ArtifactWriter",
    "FileRecord",
    "IntegrityError",
    "JobLayout",
    "JobManifest",
    "JobStatus",
    "JobSummary",
    "StageRecord",
    "StoreError",
    "cache_key",
    "check_job_id",
    "check_key",
    "cleanup_jobs",
    "list_jobs",
    "load_manifest",
    "new_job_id",
    "safe_name",
    "save_manifest",
    "sha256_file",
]
