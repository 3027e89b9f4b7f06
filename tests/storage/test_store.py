from __future__ import annotations

import hashlib
import logging
import pickle
from pathlib import Path

import pytest

from storage import ArtifactNotFoundError, ArtifactStore, IntegrityError, StoreError, check_key, sha256_file

from .conftest import S3_BUCKET, S3_KEY_ID, S3_SECRET, s3_options

BIG = 12 * 2**20  # over two 5 MiB parts: a multipart upload on S3


def _payload(size: int) -> bytes:
    return hashlib.sha256(b"seed").digest() * (size // 32) + b"x" * (size % 32)


def _pending_uploads(store: ArtifactStore, endpoint: str) -> list[dict]:
    """Multipart uploads started but neither completed nor aborted (S3 only)."""
    if store.is_local:
        return []
    import s3fs

    return s3fs.S3FileSystem(**s3_options(endpoint)).list_multipart_uploads(S3_BUCKET)


def _stray_files(store: ArtifactStore) -> list[str]:
    """Anything on disk that is not a listed artifact (temporary files), local stores only."""
    if not store.is_local:
        return []
    root = Path(store.root_url)
    on_disk = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    return sorted(on_disk - set(store.list()))


def test_bytes_text_json_round_trip_with_hashes(store: ArtifactStore) -> None:
    ref = store.write_bytes("jobs/a/inputs/blob.bin", b"\x00\x01hello")
    assert ref.key == "jobs/a/inputs/blob.bin"
    assert ref.size == 7 and ref.sha256 == hashlib.sha256(b"\x00\x01hello").hexdigest()
    assert ref.url == store.url(ref.key) and ref.url.endswith("/jobs/a/inputs/blob.bin")
    assert store.read_bytes(ref.key) == b"\x00\x01hello"
    assert store.sha256(ref.key) == ref.sha256
    assert store.size(ref.key) == 7
    store.write_text("notes.txt", "héllo")
    assert store.read_text("notes.txt") == "héllo"
    json_ref = store.write_json("jobs/a/request.json", {"b": 1, "a": [1, 2]})
    assert store.read_json("jobs/a/request.json") == {"a": [1, 2], "b": 1}
    # Sorted keys: the same value always has the same bytes and hash.
    assert store.write_json("again.json", {"a": [1, 2], "b": 1}).sha256 == json_ref.sha256


def test_streamed_write_of_a_large_object(store: ArtifactStore, s3_endpoint: str) -> None:
    data = _payload(BIG)
    with store.open_write("jobs/a/output/big.bin") as out:
        for start in range(0, len(data), 1_000_000):
            out.write(data[start : start + 1_000_000])
    assert out.ref is not None
    assert out.ref.size == BIG and out.ref.sha256 == hashlib.sha256(data).hexdigest()
    assert store.sha256("jobs/a/output/big.bin") == out.ref.sha256
    assert _pending_uploads(store, s3_endpoint) == []


@pytest.mark.parametrize("size", [1000, BIG], ids=["small", "multipart"])
def test_interrupted_write_leaves_nothing_under_the_final_name(
    store: ArtifactStore, s3_endpoint: str, size: int
) -> None:
    key = "jobs/a/segments/0000/frames/frame_000000.png"
    with pytest.raises(RuntimeError, match="worker died"):
        with store.open_write(key) as out:
            out.write(_payload(size))
            if not store.is_local and size == BIG:
                assert _pending_uploads(store, s3_endpoint), "expected a multipart upload in progress"
            raise RuntimeError("worker died")
    assert not store.exists(key)
    assert store.list() == []
    assert _pending_uploads(store, s3_endpoint) == []  # the multipart upload was aborted, not completed
    assert _stray_files(store) == []


def test_interrupted_overwrite_keeps_the_previous_object(store: ArtifactStore, s3_endpoint: str) -> None:
    store.write_bytes("jobs/a/request.json", b"old")
    with pytest.raises(KeyboardInterrupt):
        with store.open_write("jobs/a/request.json") as out:
            out.write(_payload(BIG))
            raise KeyboardInterrupt
    assert store.read_bytes("jobs/a/request.json") == b"old"
    assert _pending_uploads(store, s3_endpoint) == [] and _stray_files(store) == []


def test_put_and_get_file_are_atomic_and_verified(store: ArtifactStore, tmp_path: Path) -> None:
    source = tmp_path / "driving.mp4"
    source.write_bytes(_payload(3 * 2**20 + 5))
    uploaded: list[tuple[int, int]] = []
    ref = store.put_file(source, "jobs/a/inputs/driving.mp4", progress=lambda *p: uploaded.append(p))
    assert ref.sha256 == sha256_file(source)
    assert uploaded == [(3 * 2**20 + 5, 3 * 2**20 + 5)]  # one 8 MiB chunk
    downloaded: list[tuple[int, int]] = []
    fetched = store.get_file(
        ref.key, tmp_path / "down" / "clip.mp4", expected_sha256=ref.sha256, progress=lambda *p: downloaded.append(p)
    )
    assert fetched.read_bytes() == source.read_bytes()
    assert downloaded[-1] == (ref.size, ref.size)
    # A wrong hash: error, and the existing local file is left as it was.
    with pytest.raises(IntegrityError, match="SHA-256 is .* expected 0+$"):
        store.get_file(ref.key, fetched, expected_sha256="0" * 64)
    assert fetched.read_bytes() == source.read_bytes()
    assert sorted(p.name for p in fetched.parent.iterdir()) == ["clip.mp4"]
    with pytest.raises(FileNotFoundError, match="cannot upload .*nope.bin: no such file"):
        store.put_file(tmp_path / "nope.bin", "x.bin")


def test_listing_and_deleting(store: ArtifactStore) -> None:
    for key in ["jobs/a/request.json", "jobs/a/inputs/ref.png", "jobs/b/request.json", "cache/p/" + "0" * 64 + "/poses.json"]:
        store.write_bytes(key, b"{}")
    assert store.list("jobs/a") == ["jobs/a/inputs/ref.png", "jobs/a/request.json"]
    assert store.list("jobs/a/") == store.list("jobs/a")
    assert store.list("jobs/nothing") == []
    assert store.children("jobs") == ["a", "b"]
    assert store.children() == ["cache", "jobs"]
    assert store.exists("jobs/a/request.json") and not store.exists("jobs/a")
    assert store.delete("jobs/a/request.json") is True
    assert store.delete("jobs/a/request.json") is False
    assert store.delete_prefix("jobs/a") == 1
    assert store.list("jobs") == ["jobs/b/request.json"]
    assert store.modified("jobs/b/request.json").tzinfo is not None


def test_missing_artifacts_raise_a_clear_error(store: ArtifactStore, tmp_path: Path) -> None:
    with pytest.raises(ArtifactNotFoundError, match=r"cannot read .*jobs/zzz/request\.json: not found"):
        store.read_bytes("jobs/zzz/request.json")
    with pytest.raises(ArtifactNotFoundError):
        store.sha256("jobs/zzz/request.json")
    with pytest.raises(FileNotFoundError):  # also a FileNotFoundError, for generic handlers
        store.get_file("jobs/zzz/request.json", tmp_path / "never-written")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "key", ["", "/abs/path", "a//b", "a/../b", "./a", "a/.hidden", "a b", "a\\b", "x.partial", None]
)
def test_bad_keys_are_refused(store: ArtifactStore, key: object) -> None:
    with pytest.raises(ValueError, match="store key"):
        store.write_bytes(key, b"")  # type: ignore[arg-type]
    assert store.list() == []


def test_check_key_normalises_a_trailing_slash() -> None:
    assert check_key("jobs/a/") == "jobs/a"


def test_a_failed_commit_leaves_no_temporary_file(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    store.write_bytes("jobs/a/x.bin", b"1")
    with pytest.raises(StoreError, match=r"cannot commit .*jobs/a: IsADirectoryError"):
        store.write_bytes("jobs/a", b"a folder is in the way")  # os.replace onto a directory fails
    assert _stray_files(store) == [] and store.list() == ["jobs/a/x.bin"]


def test_local_temporary_files_are_not_listed(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    store.write_bytes("jobs/a/x.bin", b"1")
    (tmp_path / "jobs" / "a" / ".y.bin.0123456789ab.partial").write_bytes(b"half")  # a killed writer
    assert store.list() == ["jobs/a/x.bin"]
    assert store.local_path("jobs/a/x.bin") == tmp_path / "jobs" / "a" / "x.bin"


def test_credentials_never_show(s3_endpoint: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # botocore, s3fs and our own debug logs included
    store = ArtifactStore(f"s3://{S3_BUCKET}/creds", storage_options=s3_options(s3_endpoint))
    store.write_bytes("jobs/a/request.json", b"{}")
    assert S3_SECRET not in repr(store) and S3_KEY_ID not in repr(store)
    assert repr(store) == f"ArtifactStore('s3://{S3_BUCKET}/creds')"
    # Errors: a missing key, and a bucket that does not exist.
    with pytest.raises(ArtifactNotFoundError) as missing:
        store.read_bytes("jobs/a/nothing.json")
    nowhere = ArtifactStore("s3://no-such-bucket/x", storage_options=s3_options(s3_endpoint))
    with pytest.raises(StoreError) as failed:
        nowhere.write_bytes("a.json", b"{}")
    assert "no-such-bucket" in str(failed.value)
    for error in (missing.value, failed.value):
        text = f"{error} {error!r} {error.__cause__!r}"
        assert S3_SECRET not in text and S3_KEY_ID not in text
    # Pickles (task parameters, results) carry no secret; the copy still finds the bucket.
    blob = pickle.dumps(store)
    assert S3_SECRET.encode() not in blob and S3_KEY_ID.encode() not in blob
    clone = pickle.loads(blob)
    assert clone.root_url == store.root_url and repr(clone) == repr(store)
    # Logs: the secret nowhere, not even in botocore's debug output. (botocore logs the access
    # key id, AWS's public identifier, inside the Authorization header at DEBUG; our logs don't.)
    assert S3_SECRET not in caplog.text
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("storage")]
    assert ours and not any(S3_KEY_ID in line for line in ours)


def test_redact_masks_secrets_from_options_and_environment(
    s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SESSION_TOKEN", "session-token-from-env")
    store = ArtifactStore(f"s3://{S3_BUCKET}/r", storage_options=s3_options(s3_endpoint))
    text = f"failed with {S3_SECRET} and session-token-from-env at {s3_endpoint}"
    assert store.redact(text) == f"failed with *** and *** at {s3_endpoint}"


def test_local_store_pickles_and_works_after(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    store.write_bytes("a.bin", b"1")
    clone = pickle.loads(pickle.dumps(store))
    assert clone.read_bytes("a.bin") == b"1" and repr(clone) == f"ArtifactStore({str(tmp_path)!r})"


def test_other_fsspec_backends_use_a_temporary_key(tmp_path: Path) -> None:
    store = ArtifactStore("memory://controlnext-test-store")
    store.write_bytes("jobs/a/x.bin", b"done")
    with pytest.raises(RuntimeError):
        with store.open_write("jobs/a/y.bin") as out:
            out.write(b"half")
            raise RuntimeError("stop")
    assert store.list() == ["jobs/a/x.bin"]
    assert store.read_bytes("jobs/a/x.bin") == b"done"
    store.delete_prefix("jobs")


def test_presigned_links_download_without_credentials(store: ArtifactStore, s3_endpoint: str) -> None:
    import httpx

    ref = store.write_bytes("jobs/x/output/output.mp4", b"video bytes")
    link = store.http_url(ref.key, expires_seconds=600)
    if store.is_local:
        assert link is None  # no HTTP access to a folder: the report shows the path
        return
    assert link.startswith(f"{s3_endpoint}/{S3_BUCKET}/") and S3_SECRET not in link
    assert httpx.get(link).content == b"video bytes"
    public = s3_endpoint.replace("127.0.0.1", "localhost")  # the store as a browser elsewhere reaches it
    other = store.http_url(ref.key, endpoint_url=public)
    assert other.startswith(f"{public}/") and httpx.get(other).content == b"video bytes"
    with pytest.raises(ValueError, match="expires_seconds"):
        store.http_url(ref.key, expires_seconds=8 * 24 * 3600)


def test_uploads_are_content_addressed(store: ArtifactStore, tmp_path: Path) -> None:
    from storage.transfer import InputNotFoundError, upload

    path = tmp_path / "Take 3 (final).mp4"
    path.write_bytes(b"the clip")
    ref = upload(store, path)
    assert ref.key == f"uploads/{sha256_file(path)[:16]}/Take_3_final.mp4" and ref.url == store.url(ref.key)
    assert store.read_bytes(ref.key) == b"the clip"
    written = store.modified(ref.key)
    assert upload(store, path) == ref and store.modified(ref.key) == written  # not sent again
    (tmp_path / "other.mp4").write_bytes(b"another clip")
    assert upload(store, tmp_path / "other.mp4").key != ref.key
    with pytest.raises(InputNotFoundError, match="missing.png"):
        upload(store, tmp_path / "missing.png")
