"""Video I/O throughput at 576x1024 (width x height, SVD's portrait size), measured in one run.

    python bench/video_io.py                 # 240 frames, temporary folder
    python bench/video_io.py --frames 600 --workdir /tmp/bench --keep

Sources are synthetic but codec-realistic: a moving gradient under per-frame grain (so H.264
spends real bits, unlike flat test patterns) at 29.97 fps with a stereo AAC tone. Prints frames
per second for each decode and encode path and the ratio to real time (29.97 fps).
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from fractions import Fraction
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controlnext_video.video import VideoWriter, iter_frames, probe  # noqa: E402

FPS = Fraction(30000, 1001)
WIDTH, HEIGHT = 576, 1024
SOURCE_1080 = (1920, 1080)  # portrait phone clip (height, width)
GRAIN = 6.0  # std of the per-frame noise, in 8-bit levels


def synthetic_frames(count: int, height: int, width: int, seed: int = 0) -> Iterable[np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for i in range(count):
        base = np.stack(
            [
                128 + 100 * np.sin((xx + 4 * i) / 60),
                128 + 100 * np.sin((yy - 3 * i) / 80),
                128 + 100 * np.sin((xx + yy + 5 * i) / 120),
            ],
            axis=-1,
        )
        yield np.clip(base + rng.normal(0, GRAIN, base.shape), 0, 255).astype(np.uint8)


def make_source(path: Path, count: int, height: int, width: int) -> Path:
    import av

    from controlnext_video.video.audio import AAC_BITRATE_PER_CHANNEL

    seconds = float(count / FPS)
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=FPS, options={"crf": "18", "preset": "veryfast"})
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        audio = container.add_stream("aac", rate=48000, layout="stereo")
        audio.bit_rate = 2 * AAC_BITRATE_PER_CHANNEL
        for frame in tqdm(synthetic_frames(count, height, width), total=count, desc=f"source {path.name}", leave=False, disable=None):
            container.mux(video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(video.encode(None))
        t = np.arange(round(seconds * 48000)) / 48000
        tone = np.repeat((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None], 2, axis=0)
        for start in range(0, tone.shape[1], 1024):
            chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone[:, start : start + 1024]), format="fltp", layout="stereo")
            chunk.sample_rate, chunk.pts, chunk.time_base = 48000, start, Fraction(1, 48000)
            container.mux(audio.encode(chunk))
        container.mux(audio.encode(None))
    return path


def timed(label: str, frames: int, run: Callable[[], int], results: list[tuple[str, float]]) -> None:
    start = time.perf_counter()
    produced = run()
    seconds = time.perf_counter() - start
    if produced != frames:
        raise RuntimeError(f"{label}: produced {produced} frames, expected {frames}")
    rate = frames / seconds
    results.append((label, rate))
    print(f"{label:<58} {rate:8.1f} frames/s  {rate / float(FPS):6.2f}x real time", flush=True)


def consume(frames: Iterable[np.ndarray]) -> int:
    return sum(1 for _ in frames)


def encode(path: Path, frames: list[np.ndarray], **options: object) -> int:
    with VideoWriter(path, FPS, **options) as writer:  # type: ignore[arg-type]
        for frame in frames:
            writer.write(frame)
    return writer.frames_written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=240, help="frames per clip (default 240, 8 s)")
    parser.add_argument("--workdir", type=Path, default=None, help="where clips are written (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the clips")
    args = parser.parse_args()
    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="bench-video-")
    work = args.workdir or Path(tmp.name)  # type: ignore[union-attr]
    work.mkdir(parents=True, exist_ok=True)
    n = args.frames
    print(f"{n} frames at {WIDTH}x{HEIGHT} (WxH), {float(FPS):.3f} fps; workdir {work}", flush=True)
    src = make_source(work / "src-576x1024.mp4", n, HEIGHT, WIDTH)
    src_1080 = make_source(work / "src-1080x1920.mp4", n, *SOURCE_1080)
    info, info_1080 = probe(src), probe(src_1080)
    results: list[tuple[str, float]] = []

    print("\n-- decode --")
    for backend in ("decord", "pyav"):
        timed(f"decode 576x1024 H.264, {backend}", n, lambda b=backend: consume(iter_frames(src, backend=b, info=info)), results)
    timed("decode 576x1024 H.264 stride 2, decord (output frames/s)", (n + 1) // 2,
          lambda: consume(iter_frames(src, stride=2, info=info, backend="decord")), results)
    for backend in ("decord", "pyav"):
        timed(
            f"decode 1080x1920 H.264 -> 576x1024 crop, {backend}",
            n,
            lambda b=backend: consume(iter_frames(src_1080, size=(HEIGHT, WIDTH), backend=b, info=info_1080)),
            results,
        )
    start = time.perf_counter()
    probe(src_1080)
    print(f"{'probe 1080x1920 clip':<58} {time.perf_counter() - start:8.3f} s", flush=True)

    frames = list(iter_frames(src, info=info))  # encoders are timed on frames already in memory
    print("\n-- encode (576x1024 frames from memory) --")
    timed("encode H.264 crf 18 preset medium (default)", n, lambda: encode(work / "h264.mp4", frames), results)
    timed("encode H.264 crf 18 preset medium + AAC from source", n,
          lambda: encode(work / "h264-audio.mp4", frames, audio_source=src), results)
    timed("encode H.264 crf 18 preset veryfast", n, lambda: encode(work / "h264-fast.mp4", frames, preset="veryfast"), results)
    timed("encode ProRes 422 HQ + PCM from source", n, lambda: encode(work / "prores.mov", frames, codec="prores", audio_source=src), results)
    timed("encode PNG sequence (zlib level 1)", n, lambda: encode(work / "png-seq", frames, codec="png"), results)
    timed("decode PNG sequence", n, lambda: consume(iter_frames(work / "png-seq")), results)

    sizes = {p.name: p.stat().st_size for p in work.iterdir() if p.is_file()}
    png_bytes = sum(p.stat().st_size for p in (work / "png-seq").iterdir())
    print("\n-- sizes --")
    for name in ("h264.mp4", "h264-fast.mp4", "prores.mov"):
        print(f"{name:<20} {sizes[name] / n / 1024:8.1f} KiB/frame")
    print(f"{'png-seq':<20} {png_bytes / n / 1024:8.1f} KiB/frame")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB (includes {n} decoded frames held for the encode runs)")
    if tmp is not None and not args.keep:
        tmp.cleanup()


if __name__ == "__main__":
    main()
