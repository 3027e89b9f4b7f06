"""Chunked per-frame arrays: written a chunk at a time, read a chunk at a time, complete only
with their index (on a local folder and on S3)."""

from __future__ import annotations

import numpy as np
import pytest

from storage.chunks import ChunkedFrames, ChunkedFramesWriter


def _frames(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 6, 4), dtype=np.uint8)


def test_round_trip_random_access_and_chunk_reads(store):
    frames = _frames(10)
    with ChunkedFramesWriter(store, "maps/edges", chunk_frames=3) as writer:
        for frame in frames:
            writer.append(frame)
    assert writer.frames == 10 and ChunkedFrames.exists(store, "maps/edges")
    assert sorted(k.rsplit("/", 1)[1] for k in store.list("maps/edges")) == [
        "chunk-000000.npz", "chunk-000001.npz", "chunk-000002.npz", "chunk-000003.npz", "index.json"]
    reads = []
    maps = ChunkedFrames(store, "maps/edges", read=lambda key: reads.append(key) or store.read_bytes(key))
    assert len(maps) == 10 and maps.shape == (6, 4) and maps.dtype == np.uint8
    assert np.array_equal(np.stack(list(maps)), frames)
    assert len(reads) == 4  # sequential: each chunk read once
    assert np.array_equal(maps[-1], frames[9]) and np.array_equal(maps[4], frames[4])
    with pytest.raises(IndexError, match="frame 10 of 10"):
        maps[10]


def test_at_most_the_cached_chunks_are_held(store):
    with ChunkedFramesWriter(store, "m", chunk_frames=2) as writer:
        writer.extend(_frames(8))
    maps = ChunkedFrames(store, "m", cache_chunks=2)
    for i in (0, 2, 4, 6, 0):
        maps[i]
    assert len(maps._cache) == 2 and list(maps._cache) == [3, 0]  # least recently used dropped


def test_an_interrupted_write_is_incomplete_and_a_rewrite_starts_by_removing_the_index(store):
    with ChunkedFramesWriter(store, "m", chunk_frames=2) as writer:
        writer.extend(_frames(5))
    assert ChunkedFrames.exists(store, "m")
    with pytest.raises(RuntimeError):
        with ChunkedFramesWriter(store, "m", chunk_frames=2) as writer:
            writer.extend(_frames(3, seed=1))
            raise RuntimeError("killed")
    assert not ChunkedFrames.exists(store, "m")  # the old index is gone: no mix of two writes
    with ChunkedFramesWriter(store, "m", chunk_frames=2) as writer:
        writer.extend(_frames(3, seed=1))
    assert np.array_equal(np.stack(list(ChunkedFrames(store, "m"))), _frames(3, seed=1))


def test_frames_of_another_shape_and_empty_writes_are_refused(store):
    writer = ChunkedFramesWriter(store, "m")
    writer.append(np.zeros((6, 4), np.uint8))
    with pytest.raises(ValueError, match="frame 1 is"):
        writer.append(np.zeros((6, 5), np.uint8))
    with pytest.raises(ValueError, match="no frames"):
        ChunkedFramesWriter(store, "empty").close()
