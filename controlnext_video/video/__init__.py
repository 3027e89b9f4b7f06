"""Video I/O: probe, streaming decode, exact-rate encoding with audio, previews.

Nothing heavy is imported here: PyAV and decord are imported when a function needs them
(install them with ``pip install 'controlnext-video[video]'``).
"""

from .decode import Backend, iter_frames, planned_frame_count
from .encode import Codec, EncodedVideo, VideoWriter, write_video
from .errors import DamagedVideoWarning, VideoError
from .fit import Fit, fit_frame
from .preview import contact_sheet, evenly_spaced, write_side_by_side
from .probe import AudioStreamInfo, VideoInfo, probe
from .rates import format_rate, output_rate, parse_rate
from .sequence import SequenceMeta, decode_png, encode_jpeg, encode_png, frame_name, read_sequence_meta

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
    "contact_sheet",
    "decode_png",
    "encode_jpeg",
    "encode_png",
    "evenly_spaced",
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
