"""What a model directory must hold, checked without loading any weights.

A render checks its model directory before any pose or GPU work, so a missing file or a
truncated download is reported in seconds, not after ingest, pose detection and alignment.
The same check runs inside `ControlNeXtSVDPipeline.from_pretrained`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .weights import (
    CONTROLNEXT_WEIGHTS_STEM,
    PICKLE_SUFFIXES,
    SAFETENSORS_SUFFIXES,
    UNET_WEIGHTS_STEM,
    WeightsError,
    find_weights,
)

# Config files of the SVD components that loading reads (the base UNet's weights are never read).
REQUIRED_CONFIGS = (
    "unet/config.json",
    "vae/config.json",
    "image_encoder/config.json",
    "scheduler/scheduler_config.json",
    "feature_extractor/preprocessor_config.json",
)
# Weight files of the VAE and the image encoder, by component folder and file stem (diffusers and
# transformers names; the hub's fp16 variant is accepted too).
COMPONENT_WEIGHTS = (("vae", "diffusion_pytorch_model"), ("image_encoder", "model"))


@dataclass(frozen=True)
class ModelFiles:
    """The files of a checked model directory."""

    root: Path
    unet_weights: Path
    controlnext_weights: Path
    component_weights: tuple[Path, ...]

    def fingerprint(self) -> str:
        """A digest of every file that decides the pictures: configs and weights (name, size,
        modification time). Replacing or touching a weight file changes it; it reads no weights."""
        digest = hashlib.sha256()
        files = [self.root / name for name in REQUIRED_CONFIGS]
        files += [self.unet_weights, self.controlnext_weights, *self.component_weights]
        for path in files:
            stat = path.stat()
            digest.update(f"{path.relative_to(self.root) if path.is_relative_to(self.root) else path}"
                          f":{stat.st_size}:{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()


def _component_weights(directory: Path, stem: str) -> Path | None:
    for name in (f"{stem}.safetensors", f"{stem}.fp16.safetensors", f"{stem}.bin", f"{stem}.fp16.bin"):
        if (directory / name).is_file():
            return directory / name
    return None


def check_weights_file(path: Path, what: str) -> None:
    """A weights file that exists, is not empty and, for safetensors, has a readable header."""
    if path.stat().st_size == 0:
        raise WeightsError(f"{what} file {path} is empty")
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        with open(path, "rb") as handle:
            head = handle.read(8)
            size = int.from_bytes(head, "little") if len(head) == 8 else -1
            header = handle.read(size) if 0 < size <= 100_000_000 else b""
        try:
            entries = json.loads(header)
            data_end = max((v["data_offsets"][1] for k, v in entries.items() if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            raise WeightsError(f"{what} file {path} is not a readable safetensors file (damaged or "
                               "incomplete download?)") from None
        if path.stat().st_size < 8 + size + data_end:
            raise WeightsError(f"{what} file {path} is truncated: {path.stat().st_size} bytes of "
                               f"{8 + size + data_end} (incomplete download?)")
    elif path.suffix.lower() not in PICKLE_SUFFIXES:
        raise WeightsError(f"{what} file {path} has an unknown extension: expected .safetensors or .bin")


def check_model_dir(
    model_dir: str | Path, unet_weights: str | Path | None = None, controlnext_weights: str | Path | None = None
) -> ModelFiles:
    """Check that `model_dir` holds a loadable ControlNeXt-SVD model; return its files.

    Raises FileNotFoundError or WeightsError naming the directory and the missing or damaged file.
    """
    root = Path(model_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"model directory not found: {model_dir}")
    for sub in REQUIRED_CONFIGS:
        if not (root / sub).is_file():
            raise FileNotFoundError(f"{model_dir} is not an SVD model directory: {sub} is missing")
    for given, what in ((unet_weights, "ControlNeXt UNet"), (controlnext_weights, "ControlNeXt control-module")):
        if given and not Path(given).is_file():
            raise FileNotFoundError(f"{what} weights file not found: {given}")
    unet_path = Path(unet_weights) if unet_weights else find_weights(root, UNET_WEIGHTS_STEM)
    if unet_path is None:
        raise FileNotFoundError(
            f"ControlNeXt UNet weights not found: expected {UNET_WEIGHTS_STEM}.safetensors or "
            f"{UNET_WEIGHTS_STEM}.bin in {model_dir} (or pass unet_weights=)"
        )
    control_path = Path(controlnext_weights) if controlnext_weights else find_weights(root, CONTROLNEXT_WEIGHTS_STEM)
    if control_path is None:
        raise FileNotFoundError(
            f"ControlNeXt control-module weights not found: expected {CONTROLNEXT_WEIGHTS_STEM}.safetensors "
            f"or {CONTROLNEXT_WEIGHTS_STEM}.bin in {model_dir} (or pass controlnext_weights=)"
        )
    components = []
    for folder, stem in COMPONENT_WEIGHTS:
        found = _component_weights(root / folder, stem)
        if found is None:
            raise FileNotFoundError(f"{model_dir}: {folder} weights not found ({folder}/{stem}.safetensors)")
        components.append(found)
    check_weights_file(unet_path, "ControlNeXt UNet")
    check_weights_file(control_path, "ControlNeXt control module")
    for path in components:
        check_weights_file(path, f"{path.parent.name} weights")
    return ModelFiles(root, unet_path, control_path, tuple(components))
