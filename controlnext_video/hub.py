"""Download the real weights into the model layout this project loads.

Needs internet access to the Hugging Face Hub (and, for the SVD repository, a token of an
account that accepted the Stability AI licence: `huggingface-cli login` or `HF_TOKEN`).
Without network it fails at once with a `DownloadError` that says so.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .weights import CONTROLNEXT_WEIGHTS_STEM, UNET_WEIGHTS_STEM, read_state_dict

# (repo, filename, local_dir, revision, token) -> path of the downloaded file
FetchFile = Callable[[str, str, Path, str | None, str | None], str]

SVD_REPO = "stabilityai/stable-video-diffusion-img2vid-xt-1-1"
CONTROLNEXT_REPO = "Pbihao/ControlNeXt"
CONTROLNEXT_UNET_FILE = "ControlNeXt-SVD/v2/unet.bin"
CONTROLNEXT_MODULE_FILE = "ControlNeXt-SVD/v2/controlnet.bin"
# Base-model files the pipeline reads; the base UNet's weights are not among them (the
# ControlNeXt UNet replaces all of them).
SVD_CONFIG_FILES = (
    "model_index.json",
    "feature_extractor/preprocessor_config.json",
    "image_encoder/config.json",
    "scheduler/scheduler_config.json",
    "unet/config.json",
    "vae/config.json",
)


# Seconds to wait for the Hub before saying it cannot be reached.
HUB_CHECK_TIMEOUT = 10.0


class DownloadError(RuntimeError):
    """The weights could not be downloaded; the message says why and what to do."""


@dataclass(frozen=True)
class WeightSources:
    svd_repo: str = SVD_REPO
    controlnext_repo: str = CONTROLNEXT_REPO
    controlnext_unet_file: str = CONTROLNEXT_UNET_FILE
    controlnext_module_file: str = CONTROLNEXT_MODULE_FILE
    revision: str | None = None


def svd_weight_files(variant: str) -> tuple[str, ...]:
    """The SVD component weight files for a variant ("fp16" or "fp32")."""
    if variant not in ("fp16", "fp32"):
        raise ValueError(f"variant must be 'fp16' or 'fp32', got {variant!r}")
    infix = ".fp16" if variant == "fp16" else ""
    return (f"image_encoder/model{infix}.safetensors", f"vae/diffusion_pytorch_model{infix}.safetensors")


def convert_to_safetensors(source: Path, target: Path, dtype: torch.dtype | None = torch.float16) -> Path:
    """Rewrite a `.bin` state dict as safetensors (optionally cast), written atomically."""
    from safetensors.torch import save_file

    state = read_state_dict(source, what=source.name)
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    state = {k: v.contiguous() for k, v in state.items()}
    partial = target.with_name(target.name + ".partial")
    save_file(state, str(partial))
    os.replace(partial, target)
    return target


def download_weights(
    out_dir: str | Path,
    *,
    variant: str = "fp16",
    sources: WeightSources = WeightSources(),
    to_safetensors: bool = True,
    token: str | None = None,
    log: Callable[[str], None] = print,
    fetch_file: FetchFile | None = None,
) -> Path:
    """Download SVD (diffusers layout, no base UNet weights) and the ControlNeXt-SVD v2 files.

    The ControlNeXt files are stored as `controlnext-unet.*` and `controlnext.*` in `out_dir`;
    with `to_safetensors` the released fp32 pickles are converted to fp16 safetensors (half the
    size, loaded without unpickling). Files already present are not downloaded again.
    `fetch_file` replaces the Hub download (a mirror, or tests); by default the Hub is
    checked for reachability first.
    """
    if fetch_file is None:
        check_hub_reachable()
        fetch_file = _hub_fetch
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        _download_into(out_dir, fetch_file, variant, sources, to_safetensors, token, log)
    finally:
        shutil.rmtree(out_dir / ".cache", ignore_errors=True)
    log(f"model ready in {out_dir}")
    return out_dir


def _hub_fetch(repo: str, filename: str, local_dir: Path, revision: str | None, token: str | None) -> str:
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo, filename, local_dir=local_dir, revision=revision, token=token)


def _download_into(out_dir: Path, fetch_file: FetchFile, variant, sources, to_safetensors, token, log) -> None:
    svd_files = (*SVD_CONFIG_FILES, *svd_weight_files(variant))

    def fetch(repo: str, filename: str, local_dir: Path) -> Path:
        try:
            return Path(fetch_file(repo, filename, local_dir, sources.revision, token))
        except Exception as exc:  # network, auth, missing file: one clear message
            raise DownloadError(_explain(repo, filename, exc)) from exc

    for filename in svd_files:
        if (out_dir / filename).is_file():
            continue
        log(f"downloading {sources.svd_repo}/{filename}")
        fetch(sources.svd_repo, filename, out_dir)

    targets = (
        (sources.controlnext_unet_file, UNET_WEIGHTS_STEM),
        (sources.controlnext_module_file, CONTROLNEXT_WEIGHTS_STEM),
    )
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".download-") as tmp:
        for filename, stem in targets:
            final = out_dir / f"{stem}.safetensors" if to_safetensors else out_dir / f"{stem}.bin"
            if final.is_file():
                continue
            log(f"downloading {sources.controlnext_repo}/{filename}")
            fetched = fetch(sources.controlnext_repo, filename, Path(tmp))
            if to_safetensors:
                log(f"converting {fetched.name} to {final.name} (fp16 safetensors)")
                convert_to_safetensors(fetched, final)
            else:
                shutil.move(str(fetched), final)


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def check_hub_reachable(timeout: float = HUB_CHECK_TIMEOUT) -> None:
    """Fail fast, with a clear message, when the Hub cannot be reached (instead of minutes of retries)."""
    import urllib.error
    import urllib.request

    endpoint = hub_endpoint()
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return  # the server answered: reachable
    except (OSError, ValueError) as exc:
        raise DownloadError(
            f"cannot reach the Hugging Face Hub at {endpoint}: this machine has no network access to it "
            f"({exc}). Run `controlnext-video download-weights DIR` on a machine with internet access and "
            "copy DIR here."
        ) from exc


def _explain(repo: str, filename: str, exc: Exception) -> str:
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    where = f"{hub_endpoint()}/{repo} ({filename})"
    if isinstance(exc, GatedRepoError):
        return (
            f"{where} is gated: accept its licence on the model page, then log in "
            "(`huggingface-cli login` or HF_TOKEN) and run again"
        )
    if isinstance(exc, RepositoryNotFoundError):
        return f"{where} not found, or it needs a token you do not have: {exc}"
    if isinstance(exc, LocalEntryNotFoundError) or "connect" in str(exc).lower():
        return (
            f"cannot reach the Hugging Face Hub for {where}: this machine has no network access to it. "
            "Run the download on a machine with internet access and copy the model folder here. "
            f"({type(exc).__name__}: {exc})"
        )
    return f"download of {where} failed: {type(exc).__name__}: {exc}"
