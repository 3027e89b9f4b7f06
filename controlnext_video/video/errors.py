"""Errors raised by video I/O."""

from __future__ import annotations

import os


class VideoError(ValueError):
    """A video file that cannot be used, or a bad argument about one.

    The message names the file and the problem, e.g.
    ``"clip.mp4: no video stream (streams: audio)"``.
    """

    def __init__(self, path: str | os.PathLike[str] | None, problem: str) -> None:
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{self.path}: {problem}")


class DamagedVideoWarning(UserWarning):
    """A clip holds less than its container declares (cut short); the message names the file
    and how many frames are used."""
