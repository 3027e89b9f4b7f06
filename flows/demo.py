"""The demo: the whole render job on a fresh machine, with no weights and no downloads.

It builds a tiny random model (real classes, tiny sizes), makes a reference image and a driving
clip (with a tone as its audio track) from real photos shipped with scikit-image, and runs the
`render` flow end to end. The tiny model's pixels are meaningless noise: the demo shows the
pipeline working (poses, segments, blending, exact frame rate, audio), not the model's quality.
"""

from __future__ import annotations

import math
import struct
import wave
from fractions import Fraction
from pathlib import Path

import numpy as np

DEMO_FPS = Fraction(24)
DEMO_SECONDS = 3.0
TONE_HZ = 440.0
AUDIO_RATE = 48000
# Where the skimage photo sits in the driving frames, and how it moves (a sway and a bob).
CLIP_SIZE = (640, 480)  # height, width


def write_tone(path: Path, seconds: float, hz: float = TONE_HZ, rate: int = AUDIO_RATE) -> Path:
    """A mono 16-bit sine tone (the demo clip's audio track)."""
    samples = (0.3 * 32767 * np.sin(2 * math.pi * hz * np.arange(int(seconds * rate)) / rate)).astype(np.int16)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(struct.pack(f"<{len(samples)}h", *samples))
    return path


def driving_frames(seconds: float = DEMO_SECONDS, fps: Fraction = DEMO_FPS):
    """The `camera` photo (a standing man) swaying and bobbing on a grey background."""
    import cv2
    from skimage import data

    person = data.camera()
    person = np.stack([person] * 3, axis=-1)
    height, width = CLIP_SIZE
    count = int(seconds * fps)
    for i in range(count):
        t = i / float(fps)
        angle = 6.0 * math.sin(2 * math.pi * 0.5 * t)
        scale = 0.9 + 0.05 * math.sin(2 * math.pi * 0.25 * t)
        shift = np.array([40.0 * math.sin(2 * math.pi * 0.3 * t), 15.0 * math.sin(2 * math.pi * 0.9 * t)])
        matrix = cv2.getRotationMatrix2D((person.shape[1] / 2, person.shape[0] / 2), angle, scale)
        matrix[:, 2] += np.array([width / 2, height / 2]) - np.array([person.shape[1] / 2, person.shape[0] / 2]) + shift
        yield cv2.warpAffine(person, matrix, (width, height), borderValue=(128, 128, 128))


def make_demo_inputs(
    folder: str | Path, seconds: float = DEMO_SECONDS, fps: Fraction = DEMO_FPS, audio: bool = True
) -> tuple[Path, Path]:
    """Write `reference.png` (the astronaut photo) and `driving.mp4` (with a tone) into `folder`."""
    from PIL import Image
    from skimage import data

    from controlnext_video.video import VideoWriter

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    reference = folder / "reference.png"
    Image.fromarray(data.astronaut()).save(reference)
    tone = write_tone(folder / "tone.wav", seconds) if audio else None
    driving = folder / "driving.mp4"
    with VideoWriter(driving, fps, codec="h264", audio_source=tone) as writer:
        for frame in driving_frames(seconds, fps):
            writer.write(frame)
    return reference, driving


# Settings of the demo render: small and quick on a CPU, still several segments.
DEMO_REQUEST = dict(
    height=224, width=128, steps=3, window=8, overlap=2, stride=2,
    segment_length=16, segment_overlap=4, decode_chunk_size=4, seed=0,
)

# Fine-tuning of the demo (`controlnext-video demo --finetune`): the tiny model learns from the demo
# clip in about a minute on a CPU.
DEMO_FINETUNE = dict(
    steps=40, batch_size=1, learning_rate=1e-3, warmup_steps=4, unet_training="selective", height=64, width=64,
    sample_n_frames=4, frame_interval=2, checkpoint_every=20, validation_every=20, gradient_checkpointing=False,
    seed=0,
)
