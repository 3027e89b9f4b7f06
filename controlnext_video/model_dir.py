"""What a model directory must hold, checked without loading any weights.

A render checks its model directory before any pose or GPU work, so a missing file or a
truncated download is reported in seconds, not after ingest, pose detection and alignment.
The same check runs inside `ControlNeXtSVDPipeline.from_pretrained`.

Two layouts are accepted:
- "released": an SVD directory in the diffusers layout (`unet/` needs only its config) plus the
  two ControlNeXt files at its root, `controlnext-unet.*` (the full UNet) and `controlnext.*`,
  and optionally the control module's config `controlnext-config.json` (absent: ControlNeXt);
- "diffusers": what `ControlNeXtSVDPipeline.save_pretrained` writes, a standard diffusers pipeline
  directory whose `model_index.json` lists a `controlnext` component, with the UNet's weights in
  `unet/` and the control module (config and weights) in `controlnext/`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .weights import (
    CONTROLNEXT_WEIGHTS_STEM,
    PICKLE_SUFFIXES,
    SAFETENSORS_SUFFIXES,
    UNET_WEIGHTS_STEM,
    WeightsError,
    find_weights,
    is_shard_index,
    weight_files,
)

Layout = Literal["released", "diffusers"]
# Config files of the SVD components that loading reads (the base UNet's weights are never read).
REQUIRED_CONFIGS = (
    "unet/config.json",
    "vae/config.json",
    "image_encoder/config.json",
    "scheduler/scheduler_config.json",
    "feature_extractor/preprocessor_config.json",
)
# What a directory written by `save_pretrained` has on top: the pipeline's index and the control
# module's config (its weights and the UNet's are found like the other components' weights).
PIPELINE_INDEX = "model_index.json"
CONTROLNEXT_COMPONENT = "controlnext"
DIFFUSERS_CONFIGS = (PIPELINE_INDEX, f"{CONTROLNEXT_COMPONENT}/config.json")
# Weight files of the components, by component folder and file stem (diffusers and transformers
# names; the hub's fp16 variant and sharded checkpoints are accepted too).
DIFFUSERS_WEIGHTS_STEM = "diffusion_pytorch_model"
COMPONENT_WEIGHTS = (("vae", DIFFUSERS_WEIGHTS_STEM), ("image_encoder", "model"))
# The control module's config in the released layout (optional; see `controlnext_video.controls`).
CONTROL_CONFIG_FILE = "controlnext-config.json"


@dataclass(frozen=True)
class ModelFiles:
    """The files of a checked model directory (a weights path may be a shard index)."""

    root: Path
    layout: Layout
    configs: tuple[Path, ...]
    unet_weights: Path
    controlnext_weights: Path
    component_weights: tuple[Path, ...]

    def fingerprint(self) -> str:
        """A digest of every file that decides the pictures: configs and weights (name, size,
        modification time). Replacing or touching a weight file changes it; it reads no weights."""
        digest = hashlib.sha256()
        files = [*self.configs]
        for weights in (self.unet_weights, self.controlnext_weights, *self.component_weights):
            files += weight_files(weights)
        for path in files:
            stat = path.stat()
            digest.update(f"{path.relative_to(self.root) if path.is_relative_to(self.root) else path}"
                          f":{stat.st_size}:{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()


def _component_weights(directory: Path, stem: str) -> Path | None:
    """A component's weights file in `directory`: plain before the fp16 variant, safetensors
    before pickles, a single file before a shard index."""
    for variant in ("", ".fp16"):
        for name in (f"{stem}{variant}.safetensors", f"{stem}.safetensors.index{variant}.json",
                     f"{stem}{variant}.bin", f"{stem}.bin.index{variant}.json"):
            if (directory / name).is_file():
                return directory / name
    return None


def model_layout(root: Path) -> Layout:
    """"diffusers" when the directory's `model_index.json` lists a control module, else "released"."""
    index = root / PIPELINE_INDEX
    if not index.is_file():
        return "released"
    try:
        components = json.loads(index.read_text())
    except ValueError:
        raise WeightsError(f"{index} is not valid JSON") from None
    return "diffusers" if isinstance(components, dict) and CONTROLNEXT_COMPONENT in components else "released"


def check_weights_file(path: Path, what: str) -> None:
    """A weights file (or every shard of a shard index) that exists, is not empty and, for
    safetensors, has a readable header."""
    if is_shard_index(path):
        for shard in weight_files(path)[1:]:
            if not shard.is_file():
                raise FileNotFoundError(f"{what} shard {shard} listed in {path} is missing")
            check_weights_file(shard, what)
        return
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
    """Check that `model_dir` holds a loadable ControlNeXt-SVD model, in either layout; return its files.

    `unet_weights` and `controlnext_weights` replace the files the layout names.
    Raises FileNotFoundError or WeightsError naming the directory and the missing or damaged file.
    """
    root = Path(model_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"model directory not found: {model_dir}")
    layout = model_layout(root)
    configs = REQUIRED_CONFIGS if layout == "released" else (*DIFFUSERS_CONFIGS, *REQUIRED_CONFIGS)
    if layout == "released" and (root / CONTROL_CONFIG_FILE).is_file():
        configs = (*configs, CONTROL_CONFIG_FILE)
    for sub in configs:
        if not (root / sub).is_file():
            raise FileNotFoundError(f"{model_dir} is not an SVD model directory: {sub} is missing")
    for given, what in ((unet_weights, "ControlNeXt UNet"), (controlnext_weights, "ControlNeXt control-module")):
        if given and not Path(given).is_file():
            raise FileNotFoundError(f"{what} weights file not found: {given}")
    if layout == "released":
        unet_path = Path(unet_weights) if unet_weights else _released_file(
            root, UNET_WEIGHTS_STEM, "UNet", "unet_weights")
        control_path = Path(controlnext_weights) if controlnext_weights else _released_file(
            root, CONTROLNEXT_WEIGHTS_STEM, "control-module", "controlnext_weights")
    else:
        unet_path = Path(unet_weights) if unet_weights else _component_file(root, "unet", DIFFUSERS_WEIGHTS_STEM)
        control_path = Path(controlnext_weights) if controlnext_weights else _component_file(
            root, CONTROLNEXT_COMPONENT, DIFFUSERS_WEIGHTS_STEM)
    components = tuple(_component_file(root, folder, stem) for folder, stem in COMPONENT_WEIGHTS)
    check_weights_file(unet_path, "ControlNeXt UNet")
    check_weights_file(control_path, "ControlNeXt control module")
    for path in components:
        check_weights_file(path, f"{path.parent.name} weights")
    return ModelFiles(root, layout, tuple(root / sub for sub in configs), unet_path, control_path, components)


def _released_file(root: Path, stem: str, what: str, argument: str) -> Path:
    found = find_weights(root, stem)
    if found is None:
        raise FileNotFoundError(
            f"ControlNeXt {what} weights not found: expected {stem}.safetensors or {stem}.bin in {root} "
            f"(or pass {argument}=)"
        )
    return found


def _component_file(root: Path, folder: str, stem: str) -> Path:
    found = _component_weights(root / folder, stem)
    if found is None:
        raise FileNotFoundError(f"{root}: {folder} weights not found ({folder}/{stem}.safetensors)")
    return found
