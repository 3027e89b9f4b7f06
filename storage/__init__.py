"""Artifact storage over fsspec URLs: atomic writes, content hashes, the job layout, job identity
and status, the submission inbox, and moving files in and out.

Needs ``pip install 'controlnext-video[storage]'`` (fsspec, and s3fs for ``s3://``); both are
imported when a store is opened, not on import. This package never imports Prefect or the flows.
"""

from .jobs import FINAL_STATES, JobStatus, cleanup_jobs, list_jobs, read_status, write_status
from .layout import OUTPUT_NAMES, JobLayout, cache_key, check_job_id, safe_name
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
    "FINAL_STATES",
    "OUTPUT_NAMES",
    "ArtifactNotFoundError",
    "ArtifactRef",
    "ArtifactStore",
    "ArtifactWriter",
    "IntegrityError",
    "JobLayout",
    "JobStatus",
    "StoreError",
    "cache_key",
    "check_job_id",
    "check_key",
    "cleanup_jobs",
    "list_jobs",
    "read_status",
    "safe_name",
    "sha256_file",
    "write_status",
]
