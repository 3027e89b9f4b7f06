"""Model factories: the real diffusers/transformers classes with seeded random weights.

Tiny models stand in for the multi-GB SVD and ControlNeXt weights in tests and the demo; their
pictures mean nothing, but they exercise every code path, shape and file layout of the real
model. `save_tiny_model` writes a complete model directory in the layout of a real one.
`svd_size_components` builds the real architecture at real size (SVD img2vid-XT configs, which
are diffusers' defaults) with random weights, for benchmarks: nothing to download.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, UNetSpatioTemporalConditionModel

from .control import ControlNeXtModel
from .controls import ControlType, new_control
from .model_dir import CONTROL_CONFIG_FILE
from .pipeline import ControlNeXtSVDPipeline, image_processor_class
from .weights import CONTROLNEXT_WEIGHTS_STEM, UNET_WEIGHTS_STEM

# CLIP's normalization constants (the SVD feature extractor's).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_IMAGE_SIZE = 224

TINY_UNET = dict(
    block_out_channels=(32, 64),
    down_block_types=("DownBlockSpatioTemporal", "CrossAttnDownBlockSpatioTemporal"),
    up_block_types=("CrossAttnUpBlockSpatioTemporal", "UpBlockSpatioTemporal"),
    cross_attention_dim=32,
    num_attention_heads=(2, 4),
    layers_per_block=1,
    transformer_layers_per_block=1,
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=24,
    num_frames=4,
    in_channels=8,
    out_channels=4,
)
# A narrower conditioning encoder for the tiny ControlNet branch (SVD size uses ControlNet's own).
TINY_CONTROLNET = dict(conditioning_embedding_out_channels=(8, 16, 16, 32))
TINY_VAE = dict(
    block_out_channels=(32, 32, 32, 32),
    down_block_types=("DownEncoderBlock2D",) * 4,
    layers_per_block=1,
    latent_channels=4,
    in_channels=3,
    out_channels=3,
)
TINY_CLIP = dict(
    hidden_size=32,
    intermediate_size=37,
    num_attention_heads=4,
    num_hidden_layers=2,
    projection_dim=32,
    image_size=CLIP_IMAGE_SIZE,
    patch_size=14,
)
# SVD img2vid-XT's VAE and CLIP ViT-H/14 image encoder (the UNet's defaults are SVD's already).
SVD_VAE = dict(
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    layers_per_block=2,
    latent_channels=4,
    sample_size=768,
    scaling_factor=0.18215,
    force_upcast=True,
)
SVD_CLIP = dict(
    hidden_size=1280,
    intermediate_size=5120,
    num_attention_heads=16,
    num_hidden_layers=32,
    projection_dim=1024,
    image_size=CLIP_IMAGE_SIZE,
    patch_size=14,
    hidden_act="gelu",
)
# The scheduler of SVD img2vid-XT, as the reference uses it.
SVD_SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="v_prediction",
    timestep_type="continuous",
    use_karras_sigmas=True,
    sigma_min=0.002,
    sigma_max=700.0,
    timestep_spacing="leading",
    steps_offset=1,
    interpolation_type="linear",
)


def feature_extractor():
    """SVD's feature extractor (CLIP preprocessing constants at 224 px)."""
    return image_processor_class()(
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
        size={"shortest_edge": CLIP_IMAGE_SIZE},
        crop_size={"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE},
        resample=3,  # bicubic
    )


def tiny_components(seed: int = 0, control_type: ControlType = "controlnext") -> dict:
    """The tiny components, each built right after seeding torch with `seed` (deterministic).

    `control_type` picks the control design (`controlnext_video.controls`): a ControlNet branch
    starts as a copy of the tiny UNet's input path."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    unet = UNetSpatioTemporalConditionModel(**TINY_UNET)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLTemporalDecoder(**TINY_VAE)
    torch.manual_seed(seed + 2)
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_CLIP))
    torch.manual_seed(seed + 3)
    if control_type == "controlnext":
        controlnext = ControlNeXtModel.for_unet(unet.config)
    else:
        controlnext = new_control(control_type, unet, **(TINY_CONTROLNET if control_type == "controlnet" else {}))
    return dict(
        unet=unet.eval().requires_grad_(False),
        vae=vae.eval().requires_grad_(False),
        image_encoder=image_encoder.eval().requires_grad_(False),
        controlnext=controlnext.eval().requires_grad_(False),
        scheduler=EulerDiscreteScheduler(**SVD_SCHEDULER),
        feature_extractor=feature_extractor(),
    )


def svd_size_components(
    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0,
    control_type: ControlType = "controlnext",
) -> dict:
    """Real-size SVD components and a control module of `control_type` with random weights, built
    directly on `device` (a ControlNet branch copies the UNet's input path).

    The VAE is kept in float32 when `dtype` is float16 (its config asks for it).
    """
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    vae_dtype = torch.float32 if dtype == torch.float16 else dtype
    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNetSpatioTemporalConditionModel().to(dtype)
        controlnext = new_control(control_type, unet)
        vae = AutoencoderKLTemporalDecoder(**SVD_VAE).to(vae_dtype)
        image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**SVD_CLIP)).to(dtype)
    return dict(
        unet=unet.eval().requires_grad_(False),
        vae=vae.eval().requires_grad_(False),
        image_encoder=image_encoder.eval().requires_grad_(False),
        controlnext=controlnext.eval().requires_grad_(False),
        scheduler=EulerDiscreteScheduler(**SVD_SCHEDULER),
        feature_extractor=feature_extractor(),
    )


def build_pipeline(components: dict, device: torch.device | str = "cpu") -> ControlNeXtSVDPipeline:
    """A pipeline from factory components (tiny or SVD size)."""
    return ControlNeXtSVDPipeline(**components).to(device)


def build_tiny_pipeline(
    seed: int = 0, device: torch.device | str = "cpu", control_type: ControlType = "controlnext"
) -> ControlNeXtSVDPipeline:
    """A float32 tiny pipeline in memory with a control module of `control_type`."""
    return build_pipeline(tiny_components(seed, control_type), device)


def save_tiny_model(
    path: str | Path,
    seed: int = 0,
    *,
    weights_dtype: torch.dtype = torch.float16,
    weights_format: str = "safetensors",
    control_type: ControlType = "controlnext",
) -> Path:
    """Write a complete tiny model directory in the layout of a real one and return its path.

    Layout: `model_index.json`, `unet/config.json` (config only), `vae/`, `image_encoder/`,
    `feature_extractor/`, `scheduler/`, and the ControlNeXt files
    `controlnext-unet.<fmt>` and `controlnext.<fmt>` (fmt "safetensors" or "bin"); for a control
    design other than ControlNeXt, the control module's config `controlnext-config.json` too.
    """
    if weights_format not in ("safetensors", "bin"):
        raise ValueError(f"weights_format must be 'safetensors' or 'bin', got {weights_format!r}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    parts = tiny_components(seed, control_type)
    if control_type != "controlnext":
        (path / CONTROL_CONFIG_FILE).write_text(parts["controlnext"].to_json_string())
    parts["unet"].save_config(path / "unet")
    parts["vae"].save_pretrained(path / "vae")
    parts["image_encoder"].save_pretrained(path / "image_encoder")
    parts["scheduler"].save_pretrained(path / "scheduler")
    parts["feature_extractor"].save_pretrained(path / "feature_extractor")
    (path / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "StableVideoDiffusionPipeline",
                "feature_extractor": ["transformers", "CLIPImageProcessor"],
                "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
                "scheduler": ["diffusers", "EulerDiscreteScheduler"],
                "unet": ["diffusers", "UNetSpatioTemporalConditionModel"],
                "vae": ["diffusers", "AutoencoderKLTemporalDecoder"],
            },
            indent=2,
        )
    )
    for stem, module in ((UNET_WEIGHTS_STEM, parts["unet"]), (CONTROLNEXT_WEIGHTS_STEM, parts["controlnext"])):
        state = {k: v.to(weights_dtype).contiguous() for k, v in module.state_dict().items()}
        if weights_format == "safetensors":
            from safetensors.torch import save_file

            save_file(state, str(path / f"{stem}.safetensors"))
        else:
            torch.save(state, path / f"{stem}.bin")
    return path
