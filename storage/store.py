"""An artifact store over fsspec URLs: local folders by default, ``s3://`` for clusters.

Every write is atomic: readers see the previous object or the complete new one, never a
partial file under the final name.

- Local folders: the data goes to a hidden temporary file in the same directory, is fsynced,
  and `os.replace` moves it into place.
- S3 (and S3-compatible stores): s3fs sends small objects as one PUT and large ones as a
  multipart upload, both only made visible when the upload completes. On failure the upload is
  aborted (its parts deleted) and never completed. A process killed mid-upload leaves an
  incomplete multipart upload, invisible under the key; a bucket lifecycle rule
  (AbortIncompleteMultipartUpload) removes those.
- Other fsspec backends: a temporary key beside the target, moved into place when complete.

Credentials are never taken as arguments of their own: s3fs reads them from the usual places
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``, ``~/.aws``, instance
roles; ``AWS_ENDPOINT_URL`` for S3-compatible servers), or from ``storage_options``. They never
appear in ``repr``, error messages, pickles or manifests written through the store.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

logger = logging.getLogger(__name__)

#: Bytes moved per read or write call when streaming files in and out.
CHUNK_SIZE = 8 * 2**20
#: Suffix of in-progress temporary files; `ArtifactStore.list` never shows them.
PARTIAL_SUFFIX = ".partial"
#: A key is "/"-separated segments of letters, digits and ``._=+-`` (not starting with a dot).
_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._=+-]*")
#: storage_options entries whose values are secrets (matched on the option's name).
_SECRET_OPTION = re.compile(r"secret|token|password|passwd|credential|^key$|access_key|session", re.I)
#: Environment variables whose values are secrets.
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")
_OBJECT_STORES = ("s3", "s3a")
#: The longest a presigned link may stay valid (S3's limit for signature version 4: 7 days).
MAX_LINK_SECONDS = 7 * 24 * 3600

Progress = Callable[[int, int], None]
"""Called as ``progress(bytes_done, bytes_total)`` after each chunk of a file transfer."""


class StoreError(OSError):
    """A store operation failed; the message names the store, the key and the cause (redacted)."""


class ArtifactNotFoundError(StoreError, FileNotFoundError):
    """No artifact under that key."""


class IntegrityError(StoreError):
    """Content does not match the expected SHA-256."""


@dataclass(frozen=True)
class ArtifactRef:
    """A written artifact: small, JSON-able, safe to pass between tasks."""

    key: str
    url: str
    size: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_key(key: str) -> str:
    """Validate a store key (``"jobs/abc/inputs/driving.mp4"``) and return it without a trailing "/"."""
    if not isinstance(key, str) or not key.strip("/"):
        raise ValueError(f"store key must be a non-empty string, got {key!r}")
    stripped = key[:-1] if key.endswith("/") else key
    for segment in stripped.split("/"):
        if not _SEGMENT.fullmatch(segment) or segment.endswith(PARTIAL_SUFFIX):
            raise ValueError(
                f"store key {key!r} has an invalid part {segment!r}: use letters, digits and ._=+- "
                f"separated by '/', not starting with '.' nor ending with {PARTIAL_SUFFIX!r}"
            )
    return stripped


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a local file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


class ArtifactWriter:
    """File-like sink returned by `ArtifactStore.open_write`; hashes what it is given.

    After the ``with`` block ends without error, ``ref`` describes the committed artifact.
    """

    def __init__(self, store: ArtifactStore, key: str) -> None:
        self._store = store
        self.key = key
        self._digest = hashlib.sha256()
        self._size = 0
        self._handle: IO[bytes] | Any = None
        self._tmp: str | None = None
        self.ref: ArtifactRef | None = None
        self._open()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self.ref is not None or self._handle is None:
            raise ValueError(f"artifact {self.key} is no longer open for writing")
        view = memoryview(data).cast("B")
        self._handle.write(view)
        self._digest.update(view)
        self._size += view.nbytes
        return view.nbytes

    @property
    def size(self) -> int:
        return self._size

    def _open(self) -> None:
        fs, path = self._store._fs, self._store._path(self.key)
        if self._store.is_local:
            parent = os.path.dirname(path)
            os.makedirs(parent, exist_ok=True)
            self._tmp = os.path.join(parent, f".{os.path.basename(path)}.{uuid.uuid4().hex[:12]}{PARTIAL_SUFFIX}")
            self._handle = open(self._tmp, "wb")
        elif self._store.protocol in _OBJECT_STORES:
            self._handle = fs.open(path, "wb")
        else:
            parent, name = path.rsplit("/", 1)
            self._tmp = f"{parent}/.{name}.{uuid.uuid4().hex[:12]}{PARTIAL_SUFFIX}"
            self._handle = fs.open(self._tmp, "wb")

    def _commit(self) -> ArtifactRef:
        fs, path = self._store._fs, self._store._path(self.key)
        handle = self._handle
        try:
            if self._store.is_local:
                handle.flush()
                os.fsync(handle.fileno())
                handle.close()
                os.replace(self._tmp, path)  # type: ignore[arg-type]
            elif self._store.protocol in _OBJECT_STORES:
                handle.close()  # completes the PUT or the multipart upload
            else:
                handle.close()
                fs.mv(self._tmp, path)
        except BaseException:
            self._discard()  # e.g. the upload failed: abort it, remove temporary files
            raise
        self._handle = None
        fs.invalidate_cache(path)
        self.ref = ArtifactRef(self.key, self._store.url(self.key), self._size, self._digest.hexdigest())
        return self.ref

    def _discard(self) -> None:
        handle, self._handle = self._handle, None
        if handle is None:
            return
        if self._store.is_local:
            handle.close()
            Path(self._tmp).unlink(missing_ok=True)  # type: ignore[arg-type]
        elif self._store.protocol in _OBJECT_STORES:
            handle.discard()  # aborts the multipart upload, if one was started; no PUT was sent
            # Mark the file closed so neither close() nor garbage collection commits it.
            handle.closed = True
        else:
            try:
                handle.close()  # may create the temporary key, removed just below
            finally:
                if self._store._fs.exists(self._tmp):
                    self._store._fs.rm(self._tmp)


class ArtifactStore:
    """Atomic, hashed artifact storage under one root URL.

    Args:
        root_url: a local folder (``/data/artifacts``, ``file:///data/artifacts``) or a URL
            fsspec understands (``s3://bucket/prefix``).
        storage_options: passed to the fsspec filesystem, e.g.
            ``{"client_kwargs": {"endpoint_url": "http://minio:9000"}}``. Prefer credentials from the
            environment; secrets given here are kept out of ``repr``, errors and pickles.

    Keys are relative "/"-separated paths (see `check_key`); `storage.layout.JobLayout` builds
    the ones a job uses.
    """

    def __init__(self, root_url: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None) -> None:
        try:
            import fsspec
        except ImportError as exc:  # pragma: no cover - exercised only without the extra
            raise ImportError("the artifact store needs fsspec: pip install 'controlnext-video[storage]'") from exc

        raw = os.fspath(root_url)
        if "://" not in raw:
            raw = str(Path(raw).expanduser().resolve())
        self._options = dict(storage_options or {})
        try:
            fs, root = fsspec.core.url_to_fs(raw, **self._options)
        except ImportError as exc:
            raise ImportError(
                f"cannot open store {_strip_credentials(raw)}: {exc} (for s3:// install 'controlnext-video[storage]')"
            ) from exc
        except ValueError as exc:
            raise StoreError(f"cannot open store {_strip_credentials(raw)}: {self.redact(str(exc))}") from exc
        self._fs = fs
        self._root = root.rstrip("/")
        protocol = fs.protocol
        self.protocol: str = protocol if isinstance(protocol, str) else protocol[0]
        self.is_local = self.protocol in ("file", "local")
        self.root_url = raw if self.is_local else fs.unstrip_protocol(self._root)

    def __repr__(self) -> str:
        return f"ArtifactStore({self.root_url!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Secrets stay in this process: a store sent elsewhere uses that process's credentials.
        return (type(self), (self.root_url, _drop_secrets(self._options)))

    # -- addressing ------------------------------------------------------------------------
    def _path(self, key: str) -> str:
        return f"{self._root}/{check_key(key)}"

    def url(self, key: str) -> str:
        """Full URL of ``key`` (a plain path for local stores), for logs and task parameters."""
        path = self._path(key)
        return path if self.is_local else self._fs.unstrip_protocol(path)

    def http_url(self, key: str, *, expires_seconds: int = MAX_LINK_SECONDS,
                 endpoint_url: str | None = None) -> str | None:
        """A presigned HTTP link to ``key``: anyone holding it can download the artifact, without
        credentials, for ``expires_seconds``. ``endpoint_url`` is the object store's address as the
        link's users reach it (the signature covers the host), default the one this process uses.
        None for stores without HTTP access (local folders)."""
        if self.protocol not in _OBJECT_STORES:
            return None
        if not 0 < expires_seconds <= MAX_LINK_SECONDS:
            raise ValueError(f"expires_seconds must be in (0, {MAX_LINK_SECONDS}], got {expires_seconds}")
        fs = self._fs
        if endpoint_url:
            client = {**self._options.get("client_kwargs", {}), "endpoint_url": endpoint_url}
            fs = type(self._fs)(**{**self._options, "client_kwargs": client})
        path = self._path(key)
        return self._guard("link", key, lambda: fs.url(path, expires=expires_seconds))

    def local_path(self, key: str) -> Path:
        """Filesystem path of ``key`` in a local store (for tools that need a path, like PyAV)."""
        if not self.is_local:
            raise StoreError(f"{self.root_url} is not a local store; use get_file() to fetch {key}")
        return Path(self._path(key))

    # -- writing ---------------------------------------------------------------------------
    @contextmanager
    def open_write(self, key: str) -> Iterator[ArtifactWriter]:
        """Write ``key`` as a stream; it appears only if the block finishes without error.

        >>> with store.open_write("jobs/x/output/video.mp4") as out:
        ...     out.write(chunk)
        >>> out.ref.sha256
        """
        check_key(key)
        writer = self._guard("write", key, lambda: ArtifactWriter(self, key))
        try:
            yield writer
        except BaseException:
            self._guard("abort the write of", key, writer._discard)
            raise
        self._guard("commit", key, writer._commit)
        logger.debug("wrote %s (%d bytes)", self.url(key), writer.size)

    def write_bytes(self, key: str, data: bytes) -> ArtifactRef:
        """Atomically write ``data`` under ``key``."""
        with self.open_write(key) as out:
            out.write(data)
        assert out.ref is not None
        return out.ref

    def write_text(self, key: str, text: str) -> ArtifactRef:
        return self.write_bytes(key, text.encode("utf-8"))

    def write_json(self, key: str, value: Any) -> ArtifactRef:
        """Write JSON with sorted keys (stable bytes, stable hashes)."""
        return self.write_text(key, json.dumps(value, indent=2, sort_keys=True) + "\n")

    def put_file(self, local: str | os.PathLike[str], key: str, *, progress: Progress | None = None) -> ArtifactRef:
        """Upload a local file atomically, streaming it in `CHUNK_SIZE` pieces."""
        local = Path(local)
        if not local.is_file():
            raise FileNotFoundError(f"cannot upload {local}: no such file")
        total = local.stat().st_size
        with local.open("rb") as source, self.open_write(key) as out:
            while chunk := source.read(CHUNK_SIZE):
                out.write(chunk)
                if progress is not None:
                    progress(out.size, total)
        assert out.ref is not None
        return out.ref

    # -- reading ---------------------------------------------------------------------------
    @contextmanager
    def open_read(self, key: str) -> Iterator[IO[bytes]]:
        """Stream ``key``'s bytes."""
        path = self._path(key)
        handle = self._guard("open", key, lambda: self._fs.open(path, "rb"))
        try:
            yield handle
        finally:
            handle.close()

    def read_bytes(self, key: str) -> bytes:
        path = self._path(key)
        return self._guard("read", key, lambda: self._fs.cat_file(path))

    def read_text(self, key: str) -> str:
        return self.read_bytes(key).decode("utf-8")

    def read_json(self, key: str) -> Any:
        return json.loads(self.read_bytes(key))

    def get_file(
        self,
        key: str,
        local: str | os.PathLike[str],
        *,
        expected_sha256: str | None = None,
        progress: Progress | None = None,
    ) -> Path:
        """Download ``key`` to ``local`` atomically (temporary file, then rename), optionally verified."""
        local = Path(local)
        total = self.size(key) if progress is not None else 0
        done = 0
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex[:12]}{PARTIAL_SUFFIX}")
        digest = hashlib.sha256()
        try:
            with self.open_read(key) as source, tmp.open("wb") as sink:
                while chunk := self._guard("read", key, lambda: source.read(CHUNK_SIZE)):
                    sink.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
                sink.flush()
                os.fsync(sink.fileno())
            if expected_sha256 is not None and digest.hexdigest() != expected_sha256:
                raise IntegrityError(
                    f"{self.url(key)}: SHA-256 is {digest.hexdigest()}, expected {expected_sha256}"
                )
            os.replace(tmp, local)
        finally:
            tmp.unlink(missing_ok=True)
        return local

    def sha256(self, key: str) -> str:
        """Hex SHA-256 of the stored bytes (streamed)."""
        digest = hashlib.sha256()
        with self.open_read(key) as source:
            while chunk := self._guard("read", key, lambda: source.read(CHUNK_SIZE)):
                digest.update(chunk)
        return digest.hexdigest()

    # -- listing and deleting ----------------------------------------------------------------
    def exists(self, key: str) -> bool:
        path = self._path(key)
        self._fs.invalidate_cache(path)
        return bool(self._guard("check", key, lambda: self._fs.isfile(path)))

    def list(self, prefix: str = "") -> list[str]:
        """Keys under the folder ``prefix`` ("" for all), sorted; in-progress writes are not shown."""
        base = self._root if not prefix else self._path(prefix)
        self._fs.invalidate_cache(base)
        if not self._fs.isdir(base):
            return []
        found = self._guard("list", prefix or "/", lambda: self._fs.find(base))
        start = len(self._root) + 1
        keys = (p[start:] for p in found)
        return sorted(k for k in keys if k and not k.rsplit("/", 1)[-1].endswith(PARTIAL_SUFFIX))

    def children(self, prefix: str = "") -> list[str]:
        """Names directly under the folder ``prefix`` (files and sub-folders), sorted."""
        base = self._root if not prefix else self._path(prefix)
        self._fs.invalidate_cache(base)
        if not self._fs.isdir(base):
            return []
        entries = self._guard("list", prefix or "/", lambda: self._fs.ls(base, detail=False))
        names = (p.rstrip("/").rsplit("/", 1)[-1] for p in entries)
        return sorted(n for n in names if n and not n.startswith("."))

    def modified(self, key: str) -> datetime:
        """Last modification time of ``key`` (UTC)."""
        path = self._path(key)
        stamp = self._guard("stat", key, lambda: self._fs.modified(path))
        return stamp.replace(tzinfo=timezone.utc) if stamp.tzinfo is None else stamp.astimezone(timezone.utc)

    def size(self, key: str) -> int:
        path = self._path(key)
        return int(self._guard("stat", key, lambda: self._fs.size(path)))

    def delete(self, key: str) -> bool:
        """Delete one artifact; returns whether it existed."""
        if not self.exists(key):
            return False
        path = self._path(key)
        self._guard("delete", key, lambda: self._fs.rm_file(path))
        return True

    def delete_prefix(self, prefix: str) -> int:
        """Delete every artifact under the folder ``prefix``; returns how many were deleted."""
        keys = self.list(prefix)
        base = self._path(prefix)
        if self._fs.isdir(base):
            self._guard("delete", prefix, lambda: self._fs.rm(base, recursive=True))
        return len(keys)

    def write_new(self, key: str, data: bytes) -> bool:
        """Write ``key`` only if nothing is stored under it; returns whether this call wrote it.

        On a local store the check and the write are one atomic step (a hard link of a complete
        temporary file, which fails if the key exists), so of two writers racing for one key
        exactly one wins. Object stores check, then write.
        """
        if not self.is_local:
            if self.exists(key):
                return False
            self.write_bytes(key, data)
            return True
        path = self._path(key)
        parent = os.path.dirname(path)
        os.makedirs(parent, exist_ok=True)
        tmp = os.path.join(parent, f".{os.path.basename(path)}.{uuid.uuid4().hex[:12]}{PARTIAL_SUFFIX}")
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
        finally:
            Path(tmp).unlink(missing_ok=True)
        return True

    def remove_temporaries(self, prefix: str = "", older_than: float = 0.0) -> int:
        """Delete the temporary files of writes that never finished (a killed process leaves them)
        under the folder ``prefix``, if last modified more than ``older_than`` seconds ago;
        returns how many were deleted.

        Object stores keep no temporaries (an unfinished multipart upload is invisible; a bucket
        lifecycle rule removes it), so this only sweeps local and other file-like stores.
        """
        if self.protocol in _OBJECT_STORES:
            return 0
        base = self._root if not prefix else self._path(prefix)
        self._fs.invalidate_cache(base)
        if not self._fs.isdir(base):
            return 0
        now = datetime.now(timezone.utc).timestamp()
        removed = 0
        for path in self._guard("list", prefix or "/", lambda: self._fs.find(base)):
            name = path.rsplit("/", 1)[-1]
            if not (name.startswith(".") and name.endswith(PARTIAL_SUFFIX)):
                continue
            try:
                stamp = self._fs.modified(path)
                age = now - (stamp.replace(tzinfo=timezone.utc) if stamp.tzinfo is None else stamp).timestamp()
                if age >= older_than:
                    self._fs.rm_file(path)
                    removed += 1
            except FileNotFoundError:  # finished or removed meanwhile
                continue
        return removed

    # -- errors ------------------------------------------------------------------------------
    def redact(self, text: str) -> str:
        """``text`` with every known secret value (storage options, AWS env vars) replaced by ``***``."""
        for secret in _secret_values(self._options):
            text = text.replace(secret, "***")
        return text

    def _guard(self, action: str, key: str, call: Any) -> Any:
        try:
            return call()
        except StoreError:
            raise
        except FileNotFoundError as exc:
            detail = self.redact(str(exc))
            raise ArtifactNotFoundError(
                f"cannot {action} {self.url(key)}: not found" + (f" ({detail})" if detail else "")
            ) from _redacted(self, exc)
        except Exception as exc:
            raise StoreError(
                f"cannot {action} {self.url(key)}: {type(exc).__name__}: {self.redact(str(exc))}"
            ) from _redacted(self, exc)


def _redacted(store: ArtifactStore, exc: BaseException) -> BaseException | None:
    """The cause to chain: the original exception unless its text holds a secret."""
    text = str(exc)
    return exc if store.redact(text) == text else None


def _secret_values(options: Mapping[str, Any]) -> list[str]:
    values: list[str] = []

    def collect(mapping: Mapping[str, Any]) -> None:
        for name, value in mapping.items():
            if isinstance(value, Mapping):
                collect(value)
            elif isinstance(value, str) and len(value) >= 4 and _SECRET_OPTION.search(name):
                values.append(value)

    collect(options)
    values += [os.environ[name] for name in _SECRET_ENV if len(os.environ.get(name, "")) >= 4]
    return sorted(set(values), key=len, reverse=True)


def _drop_secrets(options: Mapping[str, Any]) -> dict[str, Any]:
    return {
        k: _drop_secrets(v) if isinstance(v, Mapping) else v
        for k, v in options.items()
        if not _SECRET_OPTION.search(k)
    }


def _strip_credentials(url: str) -> str:
    """``s3://user:pass@host/x`` -> ``s3://***@host/x``."""
    return re.sub(r"://[^/@]*@", "://***@", url)

