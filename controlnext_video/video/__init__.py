"""Video I/O: probe, streaming decode, exact-rate encoding with audio, previews.

Nothing heavy is imported here: PyAV and decord are imported when a function needs them
(install them with ``pip install 'controlnext-video[video]'``).
"""

from .decode import Backend, iter_frames, planned_frame_count
from .encode import Codec, EncodedVideo, VideoWriter, write_video
from .errors import DamagedVideoWarning, VideoError
from .fit import Fit, fit_frame
from .preview import write_side_by_side
from .probe import AudioStreamInfo, VideoInfo, probe
from .rates import format_rate, output_rate, parse_rate
from .sequence import SequenceMeta, decode_png, encode_png, frame_name, read_sequence_meta

__all__ = [
    "AudioStreamInfo",
    "Backend",
    "Codec",
    "DamagedVideoWarning",
    "EncodedVideo",
    "Fit",
    "SequenceMeta",
    "VideoError",
    "VideoInfo",
    "VideoWriter",
    "decode_png",
    "encode_png",
    "fit_frame",
    "format_rate",
    "frame_name",
    "iter_frames",
    "output_rate",
    "parse_rate",
    "planned_frame_count",
    "probe",
    "read_sequence_meta",
    "write_side_by_side",
    "write_video",
]
