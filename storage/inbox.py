"""A submission inbox: folders dropped under a local folder or an fsspec URL (``s3://bucket/inbox``).

::

    incoming/<name>/job.json      render settings; `reference` and `driving` name files of the
    incoming/<name>/<files>       submission, relative to its folder
    processing/<name>/...         claimed by a running inbox flow
    done/<name>/...               rendered: the submission, `result.json`, the output video
    failed/<name>/...             not rendered: the submission and `reason.txt`

Submission names are the folders' own names (spaces and other ordinary characters included);
they are never used as store keys or job ids. A submission is confined to its folder: every
path in its job file is relative to it and must stay inside it (no absolute paths or URLs, no
`..`, no symbolic link leading out). A result folder is never overwritten: a second submission
of the same name gets `<name>-2`, and so on.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

JOB_FILE = "job.json"
REASON_FILE = "reason.txt"
RESULT_FILE = "result.json"
INCOMING, PROCESSING, DONE, FAILED = "incoming", "processing", "done", "failed"
CHUNK_SIZE = 8 << 20
# Suffixes tried, after the plain name, for a folder whose name is taken: name-2 ... name-999.
MAX_SUFFIX = 999


class SubmissionError(ValueError):
    """A submission that cannot be rendered as it is; the message says why, for `reason.txt`."""


class Inbox:
    """The folders of an inbox, addressed by state and submission name."""

    def __init__(self, url: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None) -> None:
        import fsspec

        raw = os.fspath(url)
        self.is_local = "://" not in raw or raw.startswith("file://")
        if "://" not in raw:
            raw = str(Path(raw).expanduser().resolve())
        self._fs, root = fsspec.core.url_to_fs(raw, **dict(storage_options or {}))
        self.root = root.rstrip("/")
        self.url = raw

    def path(self, state: str, name: str = "", *parts: str) -> str:
        return posixpath.join(self.root, state, name, *parts).rstrip("/")

    def location(self, state: str, name: str, *parts: str) -> str:
        """A path or URL of a file in a submission, as a render request takes it."""
        path = self.path(state, name, *parts)
        return path if self.is_local else self._fs.unstrip_protocol(path)

    # -- listing and moving ------------------------------------------------------------------
    def names(self, state: str) -> list[str]:
        """Complete submissions (a folder holding a job file) in `state`, sorted."""
        base = self.path(state)
        self._fs.invalidate_cache(base)
        if not self._fs.isdir(base):
            return []
        names = []
        for entry in self._fs.ls(base, detail=True):
            name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
            if entry["type"] == "directory" and not name.startswith(".") and \
                    self._fs.isfile(self.path(state, name, JOB_FILE)):
                names.append(name)
        return sorted(names)

    def fingerprint(self, state: str) -> str:
        """A digest of the complete submissions in `state`, their names and their job files'
        versions: it changes when a submission arrives or its job file is replaced, and only then."""
        versions = []
        for name in self.names(state):
            self._fs.invalidate_cache(self.path(state, name))
            versions.append([name, self._fs.ukey(self.path(state, name, JOB_FILE))])
        return hashlib.sha256(json.dumps(versions).encode()).hexdigest()

    def move(self, name: str, source: str, target: str) -> str:
        """Move submission `name` from state `source` to `target`, under a name not yet taken there;
        returns that name."""
        for suffix in range(1, MAX_SUFFIX + 1):
            final = name if suffix == 1 else f"{name}-{suffix}"
            destination = self.path(target, final)
            if self._fs.exists(destination):
                continue
            if self.is_local:
                os.makedirs(self.path(target), exist_ok=True)
                try:
                    os.rename(self.path(source, name), destination)  # fails on an existing, non-empty folder
                except OSError:
                    if os.path.exists(destination):
                        continue  # taken meanwhile
                    raise
            else:
                self._fs.mv(self.path(source, name), destination, recursive=True)
            self._fs.invalidate_cache(self.path(target))
            return final
        raise SubmissionError(f"no free name for {name!r} in {target}/ ({name}-2 to {name}-{MAX_SUFFIX} are taken)")

    # -- reading a submission ------------------------------------------------------------------
    def read_job(self, state: str, name: str) -> dict:
        """The submission's settings (a JSON object)."""
        try:
            settings = json.loads(self._fs.cat_file(self.path(state, name, JOB_FILE)))
        except (ValueError, UnicodeDecodeError) as exc:
            raise SubmissionError(f"{JOB_FILE} is not valid JSON: {exc}") from exc
        if not isinstance(settings, dict):
            raise SubmissionError(f"{JOB_FILE} must hold a JSON object of render settings")
        return settings

    def input_location(self, state: str, name: str, relative: object, what: str) -> str:
        """The path or URL of a file the job file names, checked to lie inside the submission."""
        if not isinstance(relative, str) or not relative.strip():
            raise SubmissionError(f"{what} must name a file of the submission, got {relative!r}")
        if "://" in relative or relative.startswith(("/", "\\", "~")) or (len(relative) > 1 and relative[1] == ":"):
            raise SubmissionError(
                f"{what} {relative!r} must be a path relative to the submission folder (no absolute paths or URLs)")
        parts = relative.replace("\\", "/").split("/")
        if ".." in parts:
            raise SubmissionError(f"{what} {relative!r} leads out of the submission folder ('..')")
        path = self.path(state, name, *[p for p in parts if p not in ("", ".")])
        if not self._fs.isfile(path):
            raise SubmissionError(f"{what} file {relative!r} is not in the submission")
        if self.is_local:
            folder = os.path.realpath(self.path(state, name))
            if os.path.commonpath([folder, os.path.realpath(path)]) != folder:
                raise SubmissionError(f"{what} {relative!r} is a link leading out of the submission folder")
        return self.location(state, name, *[p for p in parts if p not in ("", ".")])

    # -- writing into a submission ---------------------------------------------------------------
    def write_text(self, state: str, name: str, filename: str, text: str) -> None:
        self.write_stream(state, name, filename, io.BytesIO(text.encode()))

    def write_stream(self, state: str, name: str, filename: str, source: IO[bytes]) -> None:
        """Copy a stream into the submission folder (a temporary file, renamed when complete)."""
        target = self.path(state, name, filename)
        self._fs.makedirs(posixpath.dirname(target), exist_ok=True)
        partial = posixpath.join(posixpath.dirname(target), f".{posixpath.basename(target)}.partial")
        with self._fs.open(partial, "wb") as out:
            while chunk := source.read(CHUNK_SIZE):
                out.write(chunk)
        self._fs.mv(partial, target)

