"""Store fixtures: every store test runs on a local folder and on a real S3-compatible HTTP
endpoint (moto's standalone server on a free localhost port, started once per session)."""

from __future__ import annotations

import logging
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from storage import ArtifactStore

S3_BUCKET = "controlnext-test"
# Test-only credentials for the throwaway moto server. The secret is distinctive so tests can
# search for it in reprs, errors, pickles and manifests.
S3_KEY_ID = "AKIATESTKEYID0000000"
S3_SECRET = "sEcReT-do-not-leak-7c1e9f"
#: s3fs part size in these tests: S3's minimum, so a 12 MiB write is a 3-part multipart upload.
S3_BLOCK_SIZE = 5 * 2**20


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """URL of a moto S3 server holding the bucket `S3_BUCKET`."""
    moto_server = pytest.importorskip("moto.server")
    import s3fs

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        s3fs.S3FileSystem(**s3_options(endpoint)).call_s3("create_bucket", Bucket=S3_BUCKET)
        yield endpoint
    finally:
        server.stop()


def s3_options(endpoint: str) -> dict[str, Any]:
    return {
        "key": S3_KEY_ID,
        "secret": S3_SECRET,
        "default_block_size": S3_BLOCK_SIZE,
        "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
    }


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ArtifactStore:
    """A fresh, empty store: a local folder, or a unique prefix in the moto bucket."""
    if request.param == "local":
        return ArtifactStore(tmp_path_factory.mktemp("store"))
    endpoint = request.getfixturevalue("s3_endpoint")
    return ArtifactStore(f"s3://{S3_BUCKET}/{uuid.uuid4().hex}", storage_options=s3_options(endpoint))
