"""The job manifest: inputs with hashes, stage progress, outputs, status and timestamps.

A small JSON record at ``jobs/<job-id>/manifest.json``. It is immutable: ``with_*`` methods
return an updated copy, which the parent flow saves with `save_manifest` (only the parent flow
writes it; segment workers write their own segment records).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Literal, get_args

from .layout import JobLayout, check_job_id
from .store import ArtifactRef, ArtifactStore

JobStatus = Literal["pending", "running", "succeeded", "failed", "cancelled"]
JOB_STATUSES: tuple[str, ...] = get_args(JobStatus)
#: Statuses after which a job never changes again (what `cleanup_jobs` deletes by default).
FINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
StageStatus = Literal["running", "succeeded", "failed", "skipped"]
STAGE_STATUSES: tuple[str, ...] = get_args(StageStatus)
SCHEMA_VERSION = 1


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(timezone.utc).isoformat()


def _parse_time(value: str | None, what: str) -> datetime | None:
    if value is None:
        return None
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError(f"{what} {value!r} has no time zone")
    return parsed


@dataclass(frozen=True)
class FileRecord:
    """An input or output artifact: where it is and what it hashes to."""

    key: str
    sha256: str
    size: int

    @classmethod
    def from_ref(cls, ref: ArtifactRef) -> FileRecord:
        return cls(key=ref.key, sha256=ref.sha256, size=ref.size)


@dataclass(frozen=True)
class StageRecord:
    status: StageStatus
    started_at: datetime | None = None
    finished_at: datetime | None = None
    message: str | None = None
    """Short note: an error summary for a failed stage, a cache hit for a skipped one."""

    @property
    def seconds(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


@dataclass(frozen=True)
class JobManifest:
    job_id: str
    status: JobStatus
    created_at: datetime
    updated_at: datetime
    inputs: dict[str, FileRecord] = field(default_factory=dict)
    stages: dict[str, StageRecord] = field(default_factory=dict)
    outputs: dict[str, FileRecord] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        check_job_id(self.job_id)
        if self.status not in JOB_STATUSES:
            raise ValueError(f"job status must be one of {JOB_STATUSES}, got {self.status!r}")
        for name, stage in self.stages.items():
            if stage.status not in STAGE_STATUSES:
                raise ValueError(f"stage {name!r} status must be one of {STAGE_STATUSES}, got {stage.status!r}")
        if self.schema_version != SCHEMA_VERSION:
            raise ValueError(f"manifest schema {self.schema_version} is not supported (expected {SCHEMA_VERSION})")

    @classmethod
    def new(cls, job_id: str, *, now: datetime | None = None) -> JobManifest:
        now = now or utc_now()
        return cls(job_id=job_id, status="pending", created_at=now, updated_at=now)

    @property
    def layout(self) -> JobLayout:
        return JobLayout(self.job_id)

    def with_status(self, status: JobStatus, *, now: datetime | None = None) -> JobManifest:
        return replace(self, status=status, updated_at=now or utc_now())

    def with_input(self, name: str, ref: ArtifactRef, *, now: datetime | None = None) -> JobManifest:
        return replace(self, inputs={**self.inputs, name: FileRecord.from_ref(ref)}, updated_at=now or utc_now())

    def with_output(self, name: str, ref: ArtifactRef, *, now: datetime | None = None) -> JobManifest:
        return replace(self, outputs={**self.outputs, name: FileRecord.from_ref(ref)}, updated_at=now or utc_now())

    def start_stage(self, name: str, *, now: datetime | None = None) -> JobManifest:
        now = now or utc_now()
        return self._with_stage(name, StageRecord("running", started_at=now), now)

    def finish_stage(
        self, name: str, *, status: StageStatus = "succeeded", message: str | None = None, now: datetime | None = None
    ) -> JobManifest:
        """Close a stage (``"succeeded"``, ``"failed"`` or ``"skipped"``); an unstarted one starts now too."""
        if status == "running":
            raise ValueError("finish_stage needs a final status, not 'running'")
        now = now or utc_now()
        started = self.stages[name].started_at if name in self.stages else now
        return self._with_stage(name, StageRecord(status, started, now, message), now)

    def _with_stage(self, name: str, stage: StageRecord, now: datetime) -> JobManifest:
        return replace(self, stages={**self.stages, name: stage}, updated_at=now)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "job_id": self.job_id,
            "status": self.status,
            "created_at": _time(self.created_at),
            "updated_at": _time(self.updated_at),
            "inputs": {k: vars(v) for k, v in self.inputs.items()},
            "stages": {
                k: {
                    "status": v.status,
                    "started_at": _time(v.started_at),
                    "finished_at": _time(v.finished_at),
                    "message": v.message,
                }
                for k, v in self.stages.items()
            },
            "outputs": {k: vars(v) for k, v in self.outputs.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobManifest:
        try:
            return cls(
                schema_version=data["schema_version"],
                job_id=data["job_id"],
                status=data["status"],
                created_at=_parse_time(data["created_at"], "created_at"),  # type: ignore[arg-type]
                updated_at=_parse_time(data["updated_at"], "updated_at"),  # type: ignore[arg-type]
                inputs={k: FileRecord(**v) for k, v in data.get("inputs", {}).items()},
                stages={
                    k: StageRecord(
                        status=v["status"],
                        started_at=_parse_time(v.get("started_at"), f"stage {k} started_at"),
                        finished_at=_parse_time(v.get("finished_at"), f"stage {k} finished_at"),
                        message=v.get("message"),
                    )
                    for k, v in data.get("stages", {}).items()
                },
                outputs={k: FileRecord(**v) for k, v in data.get("outputs", {}).items()},
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed job manifest: {exc!r}") from exc

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> JobManifest:
        return cls.from_dict(json.loads(text))


def save_manifest(store: ArtifactStore, manifest: JobManifest) -> ArtifactRef:
    """Write the manifest atomically; any secret of the store that slipped into a message is masked."""
    return store.write_text(manifest.layout.manifest, store.redact(manifest.to_json()))


def load_manifest(store: ArtifactStore, job_id: str) -> JobManifest:
    key = JobLayout(job_id).manifest
    try:
        return JobManifest.from_json(store.read_bytes(key))
    except ValueError as exc:
        raise ValueError(f"{store.url(key)}: {exc}") from exc
