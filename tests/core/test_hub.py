"""The weight download: clear failure without network; layout and conversion with a local mirror."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from controlnext_video import ControlNeXtSVDPipeline
from controlnext_video.hub import (
    CONTROLNEXT_MODULE_FILE,
    CONTROLNEXT_UNET_FILE,
    SVD_REPO,
    DownloadError,
    download_weights,
)
from controlnext_video.factory import save_tiny_model

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_cli_fails_clearly_without_network(tmp_path):
    env = dict(os.environ, HF_ENDPOINT="http://127.0.0.1:9", PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", "download-weights", str(tmp_path / "model")],
        capture_output=True, text=True, env=env, timeout=120, cwd=REPO_ROOT,
    )
    assert result.returncode == 2
    assert "cannot reach the Hugging Face Hub at http://127.0.0.1:9" in result.stderr
    assert "machine with internet access" in result.stderr
    assert not (tmp_path / "model").exists()


@pytest.fixture
def mirror(tmp_path):
    """A local stand-in for the two Hub repositories, laid out as they are (tiny weights)."""
    tiny = save_tiny_model(tmp_path / "tiny", weights_format="bin", weights_dtype=torch.float32)
    svd = tmp_path / "hub" / SVD_REPO
    shutil.copytree(tiny, svd, ignore=shutil.ignore_patterns("controlnext*"))
    for sub, stem in (("image_encoder", "model"), ("vae", "diffusion_pytorch_model")):
        (svd / sub / f"{stem}.safetensors").rename(svd / sub / f"{stem}.fp16.safetensors")
    cnx = tmp_path / "hub" / "Pbihao" / "ControlNeXt"
    for src, dst in (("controlnext-unet.bin", CONTROLNEXT_UNET_FILE), ("controlnext.bin", CONTROLNEXT_MODULE_FILE)):
        (cnx / dst).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(tiny / src, cnx / dst)
    fetched = []

    def fetch(repo, filename, local_dir, revision, token):
        source = tmp_path / "hub" / repo / filename
        if not source.is_file():
            raise FileNotFoundError(f"{repo}/{filename} is not in the mirror")
        target = Path(local_dir) / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)
        fetched.append(filename)
        return str(target)

    return fetch, fetched


def test_download_builds_a_loadable_model_dir(tmp_path, mirror):
    fetch, fetched = mirror
    out = download_weights(tmp_path / "model", fetch_file=fetch, log=lambda m: None)
    assert (out / "controlnext-unet.safetensors").is_file() and (out / "controlnext.safetensors").is_file()
    assert not any(p.name.startswith(".download") for p in out.iterdir())
    assert not (out / "unet" / "diffusion_pytorch_model.safetensors").exists()  # base UNet weights not fetched
    pipe = ControlNeXtSVDPipeline.from_pretrained(out)
    assert pipe.vae_dtype == torch.float32  # fp16 variant files loaded into fp32
    count = len(fetched)
    download_weights(tmp_path / "model", fetch_file=fetch, log=lambda m: None)
    assert len(fetched) == count  # nothing fetched twice


def test_download_can_keep_bin(tmp_path, mirror):
    fetch, _ = mirror
    out = download_weights(tmp_path / "model", fetch_file=fetch, to_safetensors=False, log=lambda m: None)
    assert (out / "controlnext-unet.bin").is_file()
    ControlNeXtSVDPipeline.from_pretrained(out)


def test_download_error_names_the_file(tmp_path, mirror):
    fetch, _ = mirror
    with pytest.raises(DownloadError, match="model.safetensors"):
        download_weights(tmp_path / "model", fetch_file=fetch, variant="fp32", log=lambda m: None)
    with pytest.raises(ValueError, match="variant"):
        download_weights(tmp_path / "model", fetch_file=fetch, variant="int8", log=lambda m: None)
