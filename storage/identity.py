"""Job identity: a job id is bound, once and for good, to the content of the job it names.

A job is its request's content: the inputs' hashes and every setting that changes the pictures.
The first run of a job writes `JobLayout.identity` (`jobs/<id>/identity.json`) (atomically, write-once); every later run
with that id must carry the same content digest, or it is refused before it writes anything. So a
reused id never serves another job's segments and never rewrites a finished job's files.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .layout import JobLayout
from .store import ArtifactNotFoundError, ArtifactStore

# Differences listed in a conflict message before summarising.
MAX_DIFFERENCES = 6


class JobConflictError(ValueError):
    """A job id already names a job with different content."""


def read_identity(store: ArtifactStore, layout: JobLayout) -> dict | None:
    try:
        return store.read_json(layout.identity)
    except ArtifactNotFoundError:
        return None


def _differences(stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    out = []
    for name in sorted(set(stored) | set(wanted)):
        if name == "digest" or stored.get(name) == wanted.get(name):
            continue
        if isinstance(stored.get(name), Mapping) and isinstance(wanted.get(name), Mapping):
            out += [f"{name}.{d}" for d in _differences(stored[name], wanted[name])]
        else:
            out.append(f"{name}: {stored.get(name)!r} there, {wanted.get(name)!r} here")
    return out


def claim_job(store: ArtifactStore, layout: JobLayout, identity: Mapping[str, Any]) -> bool:
    """Bind `layout.job_id` to `identity` (a JSON-able mapping with a ``digest`` entry).

    Returns True when this call created the job, False when the id already names this very job
    (a rerun: resume). Raises JobConflictError, naming what differs, when the id names another job.
    """
    if "digest" not in identity:
        raise ValueError("a job identity needs a 'digest' entry")
    data = json.dumps(identity, indent=2, sort_keys=True).encode() + b"\n"
    if store.write_new(layout.identity, data):
        return True
    stored = read_identity(store, layout) or {}
    if stored.get("digest") == identity["digest"]:
        return False
    differences = _differences(stored, identity)
    shown = "; ".join(differences[:MAX_DIFFERENCES]) + (" ..." if len(differences) > MAX_DIFFERENCES else "")
    raise JobConflictError(
        f"job id {layout.job_id!r} already names a different job in {store.root_url} ({shown or 'content differs'}): "
        "choose another job id, or leave it empty to derive one from the request's content"
    )
