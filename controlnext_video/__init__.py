"""controlnext-video: ControlNeXt on Stable Video Diffusion.

Public names are imported lazily, so importing the package (or its `video` subpackage) loads
neither torch nor diffusers.
"""

from __future__ import annotations

from ._lazy import lazy_getattr

_LAZY = {
    "ControlNeXtSVDPipeline": "controlnext_video.pipeline",
    "ControlNeXtModel": "controlnext_video.control",
    "plan_windows": "controlnext_video.windows",
    "WindowPlan": "controlnext_video.windows",
    "Window": "controlnext_video.windows",
    "WeightsError": "controlnext_video.weights",
}

__all__ = sorted(_LAZY)

__getattr__ = lazy_getattr(__name__, _LAZY)
