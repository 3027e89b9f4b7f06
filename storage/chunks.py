"""Long per-frame arrays (a clip's edge or mask maps) in the store as fixed-size chunks.

A clip's maps grow with its length (300 frames of 1024x576 maps are 177 MB, a 1080p training
clip's several times that), so they are never held whole: `ChunkedFramesWriter` writes each chunk
of `CHUNK_FRAMES` frames as it fills (a compressed `.npz`, lossless), and `ChunkedFrames` reads
one chunk at a time, keeping the last few in memory. A folder `<prefix>/` holds `chunk-NNNNNN.npz`
files and `index.json`, written last: a folder without an index (a writer interrupted) is
incomplete and reads as absent; writing starts by removing an old index, so an index never
describes a mix of two writes.
"""

from __future__ import annotations

import io
from collections import OrderedDict
from collections.abc import Callable, Iterator

import numpy as np

from .store import ArtifactStore

# Frames per chunk: 32 maps of 1024x576 are 19 MB in memory, a few hundred kB compressed.
CHUNK_FRAMES = 32
INDEX = "index.json"
FORMAT = "chunked-frames/1"


def _chunk_key(prefix: str, chunk: int) -> str:
    return f"{prefix}/chunk-{chunk:06d}.npz"


def _to_bytes(frames: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, frames=frames)
    return buffer.getvalue()


def _from_bytes(data: bytes) -> np.ndarray:
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        return archive["frames"]


class ChunkedFramesWriter:
    """Appends frames of one shape and dtype; `close()` writes the last chunk and the index.

    Used as a context manager, an exception leaves the folder without an index (incomplete)."""

    def __init__(self, store: ArtifactStore, prefix: str, *, chunk_frames: int = CHUNK_FRAMES) -> None:
        if chunk_frames < 1:
            raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
        self.store, self.prefix, self.chunk_frames = store, prefix.rstrip("/"), chunk_frames
        self.store.delete(f"{self.prefix}/{INDEX}")
        self._pending: list[np.ndarray] = []
        self._chunks = 0
        self.frames = 0
        self._shape: tuple[int, ...] | None = None
        self._dtype: np.dtype | None = None

    def append(self, frame: np.ndarray) -> None:
        frame = np.asarray(frame)
        if self._shape is None:
            self._shape, self._dtype = frame.shape, frame.dtype
        elif frame.shape != self._shape or frame.dtype != self._dtype:
            raise ValueError(f"{self.prefix}: frame {self.frames} is {frame.shape} {frame.dtype}, "
                             f"the earlier ones {self._shape} {self._dtype}")
        self._pending.append(frame)
        self.frames += 1
        if len(self._pending) == self.chunk_frames:
            self._flush()

    def extend(self, frames) -> None:
        for frame in frames:
            self.append(frame)

    def _flush(self) -> None:
        if self._pending:
            self.store.write_bytes(_chunk_key(self.prefix, self._chunks), _to_bytes(np.stack(self._pending)))
            self._chunks += 1
            self._pending = []

    def close(self) -> int:
        """Write what is left and the index; returns the number of frames."""
        if self._shape is None:
            raise ValueError(f"{self.prefix}: no frames to write")
        self._flush()
        self.store.write_json(f"{self.prefix}/{INDEX}", dict(
            format=FORMAT, frames=self.frames, chunk_frames=self.chunk_frames, chunks=self._chunks,
            shape=list(self._shape), dtype=str(self._dtype)))
        return self.frames

    def __enter__(self) -> ChunkedFramesWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()


class ChunkedFrames:
    """Random and sequential access to a chunked folder, one chunk read at a time.

    `read`: how a chunk's bytes are fetched (default `store.read_bytes`; a training run passes a
    local copy's reader); `cache_chunks`: chunks kept in memory (least recently used dropped)."""

    def __init__(self, store: ArtifactStore, prefix: str, *, cache_chunks: int = 2,
                 read: Callable[[str], bytes] | None = None) -> None:
        self.store, self.prefix = store, prefix.rstrip("/")
        index = store.read_json(f"{self.prefix}/{INDEX}")
        if index.get("format") != FORMAT:
            raise ValueError(f"{store.url(self.prefix)}: not a chunked-frames folder ({index.get('format')!r})")
        self.frames, self.chunk_frames = int(index["frames"]), int(index["chunk_frames"])
        self.shape, self.dtype = tuple(index["shape"]), np.dtype(index["dtype"])
        self._read = read or store.read_bytes
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_chunks = max(1, cache_chunks)

    @staticmethod
    def exists(store: ArtifactStore, prefix: str) -> bool:
        """Whether a complete folder is there (its index written)."""
        return store.exists(f"{prefix.rstrip('/')}/{INDEX}")

    def __len__(self) -> int:
        return self.frames

    def _chunk(self, chunk: int) -> np.ndarray:
        if chunk in self._cache:
            self._cache.move_to_end(chunk)
            return self._cache[chunk]
        frames = _from_bytes(self._read(_chunk_key(self.prefix, chunk)))
        expected = min(self.chunk_frames, self.frames - chunk * self.chunk_frames)
        if frames.shape != (expected, *self.shape) or frames.dtype != self.dtype:
            raise ValueError(f"{self.store.url(_chunk_key(self.prefix, chunk))}: holds {frames.shape} {frames.dtype}, "
                             f"the index says {(expected, *self.shape)} {self.dtype}")
        self._cache[chunk] = frames
        while len(self._cache) > self._cache_chunks:
            self._cache.popitem(last=False)
        return frames

    def __getitem__(self, i: int) -> np.ndarray:
        i = int(i)
        if i < 0:
            i += self.frames
        if not 0 <= i < self.frames:
            raise IndexError(f"{self.store.url(self.prefix)}: frame {i} of {self.frames}")
        return self._chunk(i // self.chunk_frames)[i % self.chunk_frames]

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(self.frames):
            yield self[i]
