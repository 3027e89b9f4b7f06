from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from controlnext_video.video import (
    VideoError,
    VideoWriter,
    iter_frames,
    output_rate,
    planned_frame_count,
    probe,
    write_video,
)

from .clips import (
    container_durations,
    decode_audio,
    dominant_hz,
    is_upright,
    loud,
    make_clip,
    make_tone_file,
    pattern,
    read_counter,
)
from .conftest import CLIP_FRAMES, RATES

OUTPUTS = {"h264": "out.mp4", "prores": "out.mov", "png": "out-frames"}


# Every rate and stride through H.264; ProRes and PNG on the two NTSC rates (keeps the suite fast).
ROUND_TRIPS = [(name, stride, "h264") for name in RATES for stride in (1, 2)] + [
    (name, stride, codec) for name in ("29.97", "23.976") for stride in (1, 2) for codec in ("prores", "png")
]


@pytest.mark.parametrize(("name", "stride", "codec"), ROUND_TRIPS)
def test_round_trip_keeps_exact_rate_length_and_audio(
    tmp_path: Path, rate_clips: dict[str, Path], name: str, stride: int, codec: str
) -> None:
    source = probe(rate_clips[name])
    fps = output_rate(source.fps, stride)
    out = tmp_path / OUTPUTS[codec]
    result = write_video(
        out, iter_frames(source.path, stride=stride), fps, codec=codec, audio_source=source.path
    )
    written = probe(out)
    # Exact fraction, never a rounded rate: 29.97 / 2 is 15000/1001.
    assert written.fps == fps == source.fps / stride
    assert written.frame_count == result.frame_count == planned_frame_count(source, stride)
    # Duration matches the source to within one output frame.
    assert abs(written.duration - source.duration) < float(1 / fps)
    assert written.duration == pytest.approx(float(written.frame_count / fps))
    assert [read_counter(f) for f in iter_frames(out)] == list(range(0, CLIP_FRAMES, stride))
    (audio,) = written.audio
    if codec != "png":
        with av.open(str(out)) as container:
            stream = container.streams.video[0]
            assert stream.average_rate == fps and stream.base_rate == fps
            assert stream.duration * stream.time_base == written.frame_count / fps
    # The 2 s source tone is trimmed to the video's length.
    assert audio.duration == pytest.approx(written.duration, abs=0.001)
    assert result.audio_duration == pytest.approx(written.duration, abs=0.001)


@pytest.mark.parametrize("stride", [1, 2])
def test_rotated_variable_rate_phone_clip_comes_out_upright_in_time_with_its_audio(
    tmp_path: Path, stride: int
) -> None:
    # Portrait phone clip: coded landscape with a 90 degree display matrix, ~30 fps with
    # dropped frames, and a tone as long as the video.
    stamps, t = [], Fraction(0)
    for i in range(45):
        stamps.append(t)
        t += Fraction(2, 30) if i % 4 == 3 else Fraction(1, 30)
    span = float(t)
    source = make_clip(
        tmp_path / "phone.mp4", frames=45, size=(96, 64), rotation=90, timestamps=stamps, audio_seconds=span
    )
    info = probe(source)
    assert info.is_vfr and info.rotation == 90 and (info.height, info.width) == (96, 64)
    fps = output_rate(info.fps, stride)
    out = write_video(tmp_path / "out.mp4", iter_frames(source, stride=stride), fps, audio_source=source)
    written = probe(out.path)
    assert written.fps == fps and (written.height, written.width, written.rotation) == (96, 64, 0)
    assert abs(written.duration - span) < float(1 / fps)
    assert written.audio[0].duration == pytest.approx(written.duration, abs=0.001)
    frames = list(iter_frames(out.path))
    assert all(is_upright(f) for f in frames)
    for j, frame in enumerate(frames):  # each frame is the source frame nearest its time
        shown = read_counter(frame)
        assert abs(stamps[shown] - j / fps) == min(abs(s - j / fps) for s in stamps)


def test_h264_output_is_tagged_bt709_yuv420p_and_keeps_colours(tmp_path: Path) -> None:
    frames = [pattern(i, (128, 192)) for i in range(10)]
    out = write_video(tmp_path / "colour.mp4", frames, 25, crf=10).path
    with av.open(out) as container:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        assert (ctx.name, ctx.pix_fmt) == ("h264", "yuv420p")
        assert (ctx.colorspace, ctx.color_primaries, ctx.color_trc, ctx.color_range) == (1, 1, 1, 1)
    decoded = list(iter_frames(out))
    error = np.abs(np.stack(decoded).astype(int) - np.stack(frames).astype(int))
    assert np.median(error) <= 1 and error.mean() < 4  # no matrix mismatch (601 vs 709 shifts by 10+)


def test_prores_is_422_hq_10_bit_with_pcm_audio(tmp_path: Path, rate_clips: dict[str, Path]) -> None:
    out = write_video(
        tmp_path / "master.mov", iter_frames(rate_clips["23.976"]), Fraction(24000, 1001),
        codec="prores", audio_source=rate_clips["23.976"],
    ).path
    with av.open(out) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert (video.codec_context.name, video.profile, video.codec_tag) == ("prores", "HQ", "apch")
        assert video.codec_context.pix_fmt == "yuv422p10le"
        assert audio.codec_context.name == "pcm_s24le"


def test_png_sequence_is_lossless_and_records_the_rate(tmp_path: Path) -> None:
    frames = [pattern(i) for i in range(5)]
    out = tmp_path / "frames"
    write_video(out, frames, Fraction(30000, 1001), codec="png")
    meta = json.loads((out / "sequence.json").read_text())
    assert meta == {"fps": "30000/1001", "frame_count": 5, "width": 96, "height": 64, "audio": None}
    assert sorted(p.name for p in out.iterdir()) == [f"frame_{i:06d}.png" for i in range(5)] + ["sequence.json"]
    for original, decoded in zip(frames, iter_frames(out), strict=True):
        np.testing.assert_array_equal(original, decoded)
    assert [read_counter(f) for f in iter_frames(out, stride=2, max_frames=2)] == [0, 2]


@pytest.mark.parametrize("suffix", [".mp4", ".mov"])
def test_audio_offset_trims_or_delays_the_source(tmp_path: Path, suffix: str) -> None:
    # Source: 0.5 s silence, then 2 s of 440 Hz. Output: 1 s of video at 25 fps.
    source = make_tone_file(tmp_path / "step.wav", 2.0, rate=48000, lead_silence=0.5)
    frames = [pattern(i) for i in range(25)]
    codec = "h264" if suffix == ".mp4" else "prores"
    for offset, silent_until in [(0.0, 0.5), (0.3, 0.2), (-0.2, 0.7), (0.5, 0.0)]:
        out = tmp_path / f"offset{offset}{suffix}"
        write_video(out, frames, 25, codec=codec, audio_source=source, audio_offset=offset)
        samples, rate = decode_audio(out)
        flags = loud(samples[:, : rate], rate)  # 10 ms windows over the first second
        first_loud = int(np.argmax(flags)) * 0.01
        # AAC's transform smears the onset by a window; PCM is exact to the 10 ms window.
        assert first_loud == pytest.approx(silent_until, abs=0.025 if codec == "h264" else 0.011), offset
        assert container_durations(out)["audio"] == pytest.approx(1.0, abs=0.001)
        assert dominant_hz(samples[:, round(0.75 * rate) :], rate) == pytest.approx(440, abs=5)


def test_short_audio_is_padded_with_silence_to_the_video_length(tmp_path: Path) -> None:
    source = make_tone_file(tmp_path / "short.wav", 0.4, rate=48000)
    out = write_video(tmp_path / "pad.mov", [pattern(i) for i in range(25)], 25, codec="prores", audio_source=source).path
    samples, rate = decode_audio(Path(out))
    assert samples.shape[1] == rate  # exactly 1 s
    flags = loud(samples, rate)
    assert flags[:39].all() and not flags[41:].any()


def test_video_without_audio_and_audio_source_without_audio(tmp_path: Path, silent_clip: Path) -> None:
    plain = write_video(tmp_path / "plain.mp4", iter_frames(silent_clip), 25)
    assert plain.audio_duration is None and probe(plain.path).audio == ()
    # A driving clip without an audio track is not an error: the output simply has none.
    muted = write_video(tmp_path / "muted.mp4", iter_frames(silent_clip), 25, audio_source=silent_clip)
    assert muted.audio_duration is None and probe(muted.path).audio == ()
    seq = write_video(tmp_path / "seq", iter_frames(silent_clip), 25, codec="png", audio_source=silent_clip)
    assert not (Path(seq.path) / "audio.wav").exists()


def test_png_sequence_carries_audio_as_wav(tmp_path: Path, tone_wav: Path) -> None:
    out = tmp_path / "seq"
    write_video(out, [pattern(i) for i in range(12)], 24, codec="png", audio_source=tone_wav)
    info = probe(out)
    assert info.fps == 24 and info.frame_count == 12
    assert info.audio[0].duration == pytest.approx(0.5, abs=1e-4)


def test_an_exception_leaves_nothing_under_the_final_name(tmp_path: Path, tone_wav: Path) -> None:
    for name, codec in [("broken.mp4", "h264"), ("broken.mov", "prores"), ("broken-seq", "png")]:
        target = tmp_path / name
        with pytest.raises(RuntimeError, match="render crashed"):
            with VideoWriter(target, 25, codec=codec, audio_source=tone_wav) as writer:
                for i in range(10):
                    writer.write(pattern(i))
                raise RuntimeError("render crashed")
        assert not target.exists()
    assert not list(tmp_path.iterdir())  # no temporary files left either


def test_a_failed_rewrite_keeps_the_previous_output(tmp_path: Path) -> None:
    target = tmp_path / "final.mp4"
    write_video(target, [pattern(i) for i in range(5)], 25)
    before = target.read_bytes()
    with pytest.raises(ValueError, match="frame 3 is 32x32"):
        with VideoWriter(target, 25) as writer:
            for i in range(3):
                writer.write(pattern(i))
            writer.write(np.zeros((32, 32, 3), np.uint8))
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final.mp4"]


def test_writer_argument_errors(tmp_path: Path, silent_clip: Path) -> None:
    with pytest.raises(ValueError, match="fps must be exact"):
        VideoWriter(tmp_path / "a.mp4", 29.97)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="crf must be an int in"):
        VideoWriter(tmp_path / "a.mp4", 25, crf=60)
    with pytest.raises(ValueError, match="preset must be one of"):
        VideoWriter(tmp_path / "a.mp4", 25, preset="turbo")
    with pytest.raises(ValueError, match="crf and preset apply to codec 'h264' only, not 'prores'"):
        VideoWriter(tmp_path / "a.mov", 25, codec="prores", crf=10)
    with pytest.raises(VideoError, match=r"a\.avi: codec 'h264' needs a file ending in"):
        VideoWriter(tmp_path / "a.avi", 25)
    with pytest.raises(VideoError, match=r"a\.mp4: codec 'prores' needs a file ending in \['\.mov'\]"):
        VideoWriter(tmp_path / "a.mp4", 25, codec="prores")
    with pytest.raises(VideoError, match="audio source does not exist"):
        VideoWriter(tmp_path / "a.mp4", 25, audio_source=tmp_path / "missing.wav")
    with pytest.raises(VideoError, match=r"t\.wav: audio_stream=1 but the file has 1 audio stream"):
        VideoWriter(tmp_path / "b.mp4", 25, audio_source=make_tone_file(tmp_path / "t.wav", 0.1), audio_stream=1)
    with pytest.raises(VideoError, match=r"h264 needs even dimensions, frames are 63x96"):
        with VideoWriter(tmp_path / "odd.mp4", 25) as writer:
            writer.write(pattern(0)[:63])
    with pytest.raises(ValueError, match=r"frame 0 must be a uint8 \(H, W, 3\) RGB array"):
        with VideoWriter(tmp_path / "f.mp4", 25) as writer:
            writer.write(pattern(0).astype(np.float32))
    with pytest.raises(VideoError, match="no frames were written"):
        with VideoWriter(tmp_path / "empty.mp4", 25):
            pass
    existing = write_video(tmp_path / "exists.mp4", [pattern(0)], 25).path
    with pytest.raises(VideoError, match="output exists"):
        VideoWriter(existing, 25, overwrite=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists.mp4", "t.wav"]
