"""Encoder settings that make an output depend only on its input, not on the machine.

Left alone, PyAV lets an encoder pick its thread layout from the CPUs the calling thread may run
on: x264 then cuts every picture into one slice per CPU, so a worker pinned to fewer cores, a
container with another CPU quota, or another machine encodes other pictures from the same
frames. Fixed frame threads (which x264 keeps bit-exact for a given count) and FFmpeg's bitexact
mode (no version strings, no wall-clock times) make the file bytes a function of the frames,
the audio and the settings, for one FFmpeg build.
"""

from __future__ import annotations

from typing import Any

from ._deps import import_av

#: Video encoder threads: fixed, so that the output does not depend on the CPU count.
ENCODER_THREADS = 4
#: Options for an output container (muxer): no encoder version string, no creation time.
MUXER_OPTIONS = {"fflags": "+bitexact"}


def make_deterministic(ctx: Any, *, threads: int) -> None:
    """Give an encoder (a PyAV codec context, before it opens) ``threads`` frame threads and bitexact mode."""
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an int >= 1, got {threads!r}")
    av = import_av()
    ctx.thread_count = threads
    ctx.thread_type = "FRAME" if threads > 1 else "NONE"
    ctx.flags |= av.codec.context.Flags.bitexact
