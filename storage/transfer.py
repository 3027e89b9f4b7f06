"""Moving files in and out of a job: uploads of inputs, inputs given as paths or URLs, local
copies of stored artifacts for tools that need a file (decoders, encoders), and delivery of the
output to where a request asks for it."""

from __future__ import annotations

import hashlib
import os
import posixpath
from pathlib import Path

from .layout import safe_name, upload_key
from .store import CHUNK_SIZE, PARTIAL_SUFFIX, ArtifactNotFoundError, ArtifactRef, ArtifactStore, StoreError, sha256_file


class InputNotFoundError(FileNotFoundError):
    """An input the request names does not exist; the message names it."""


def fetch(url: str, local_dir: Path, what: str) -> Path:
    """A local file for an input given as a path or an fsspec URL (s3://, http://, ...).

    A local path is returned as it is; a URL is downloaded into `local_dir` (a temporary name,
    renamed when complete).
    """
    if "://" not in url:
        path = Path(url).expanduser()
        if not path.is_file():
            raise InputNotFoundError(f"{what} not found: {url}")
        return path
    import fsspec

    target = Path(local_dir) / Path(url.split("?")[0]).name
    partial = target.with_name(f".{target.name}{PARTIAL_SUFFIX}")
    try:
        with fsspec.open(url, "rb") as src, open(partial, "wb") as dst:
            while chunk := src.read(CHUNK_SIZE):
                dst.write(chunk)
    except FileNotFoundError as exc:
        partial.unlink(missing_ok=True)
        raise InputNotFoundError(f"{what} not found: {url}") from exc
    os.replace(partial, target)
    return target


def upload(store: ArtifactStore, path: str | os.PathLike[str]) -> ArtifactRef:
    """Put a local file under `uploads/` in the store (`storage.layout.upload_key`), once: a file
    already uploaded is not sent again. Returns its reference (`url` is what a request takes)."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"file to upload not found: {path}")
    digest = sha256_file(path)
    key = upload_key(digest, safe_name(path.name))
    if store.exists(key) and store.sha256(key) == digest:
        return ArtifactRef(key, store.url(key), store.size(key), digest)
    return store.put_file(path, key)


def local_copy(store: ArtifactStore, key: str, scratch: Path) -> Path:
    """A local file holding a stored artifact: the store's own file when it is local, else a copy
    under `scratch` (downloaded once, verified against the stored hash)."""
    if store.is_local:
        return store.local_path(key)
    target = Path(scratch) / key
    if not target.is_file():
        store.get_file(key, target, expected_sha256=store.sha256(key))
    return target


def deliver(store: ArtifactStore, key: str, destination: str) -> str:
    """Copy a stored output (a file, or a folder key with its sub-folders) to a path or fsspec URL.

    Each file goes to a temporary name first and is renamed when complete; a file already there
    with the same content is left untouched. Returns `destination`.
    """
    import fsspec

    keys = store.list(key) or [key]
    if keys == [key] and not store.exists(key):
        raise ArtifactNotFoundError(f"nothing to deliver: {store.url(key)} does not exist")
    fs, root = fsspec.core.url_to_fs(destination)
    for source in keys:
        target = root if source == key else posixpath.join(root, source[len(key) + 1:])
        if fs.isfile(target) and _same_content(fs, target, store, source):
            continue
        fs.makedirs(posixpath.dirname(target) or "/", exist_ok=True)
        partial = posixpath.join(posixpath.dirname(target), f".{posixpath.basename(target)}{PARTIAL_SUFFIX}")
        try:
            with store.open_read(source) as src, fs.open(partial, "wb") as dst:
                while chunk := src.read(CHUNK_SIZE):
                    dst.write(chunk)
            fs.mv(partial, target)
        except OSError as exc:
            raise StoreError(f"cannot deliver {store.url(source)} to {target}: {exc}") from exc
    return destination


def _same_content(fs, path: str, store: ArtifactStore, key: str) -> bool:
    if fs.size(path) != store.size(key):
        return False
    digest = hashlib.sha256()
    with fs.open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest() == store.sha256(key)


def list_files(url: str, suffixes: tuple[str, ...]) -> list[tuple[str, str]]:
    """(name relative to `url`, path or URL) of every file under a folder or URL prefix whose name
    ends with one of `suffixes` (case-insensitive), sorted by name; hidden files are skipped."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(url if "://" in url else str(Path(url).expanduser().resolve()))
    if not fs.isdir(root):
        raise InputNotFoundError(f"folder not found: {url}")
    found = []
    for path in fs.find(root):
        name = path[len(root.rstrip("/")) + 1:]
        if name.lower().endswith(suffixes) and not any(part.startswith(".") for part in name.split("/")):
            found.append((name, path if "://" not in url else fs.unstrip_protocol(path)))
    return sorted(found)
