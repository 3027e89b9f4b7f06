"""The `CONTROLNEXT_*` environment, read in one place.

| variable | what | default |
| --- | --- | --- |
| `CONTROLNEXT_STORE` | artifact store root (folder or `s3://` URL) | `renders` |
| `CONTROLNEXT_MODEL_DIR` | model directory on the workers | `models/controlnext-svd` |
| `CONTROLNEXT_INBOX` | inbox root for the scheduled inbox deployment | `inbox` |
| `CONTROLNEXT_PROJECT_DIR` | project folder on the workers (deployments' working directory) | `.` |
| `CONTROLNEXT_WORK_DIR` | local scratch for files tools need on disk | `<tmp>/controlnext-video` |
| `CONTROLNEXT_LINK_ENDPOINT` | the object store's address as people's browsers reach it, for the report's download links | the workers' own (`AWS_ENDPOINT_URL`) |
| `WORKER_ID` | this worker's name in segment records | `<host>:<pid>` |
| `CONTROLNEXT_GPUS` | the GPUs this worker owns (`0,1,2,3`; set by `worker --gpus`): a segment run uses them together | none: one process |
"""

from __future__ import annotations

import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Environment:
    store: str
    model_dir: str
    inbox: str
    project_dir: str
    work_dir: Path
    worker_id: str
    link_endpoint: str
    gpus: tuple[str, ...] = ()

    @classmethod
    def read(cls) -> "Environment":
        env = os.environ
        return cls(
            store=env.get("CONTROLNEXT_STORE") or "renders",
            model_dir=env.get("CONTROLNEXT_MODEL_DIR") or "models/controlnext-svd",
            inbox=env.get("CONTROLNEXT_INBOX") or "inbox",
            project_dir=env.get("CONTROLNEXT_PROJECT_DIR") or ".",
            work_dir=Path(env.get("CONTROLNEXT_WORK_DIR") or Path(tempfile.gettempdir()) / "controlnext-video"),
            worker_id=env.get("WORKER_ID") or f"{socket.gethostname()}:{os.getpid()}",
            link_endpoint=env.get("CONTROLNEXT_LINK_ENDPOINT") or "",
            gpus=tuple(g.strip() for g in (env.get("CONTROLNEXT_GPUS") or "").split(",") if g.strip()),
        )

    def scratch(self, *parts: str) -> Path:
        """A local scratch folder (created) under `work_dir`."""
        path = self.work_dir.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path
