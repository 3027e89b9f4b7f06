"""The `finetune` flow end to end in-process (tiny model, the demo clip): train, monitor, resume,
export, and render with the result."""

from __future__ import annotations

import json

import numpy as np
import pytest

from .conftest import small_request

pytestmark = pytest.mark.heavy

TINY = dict(steps=4, batch_size=1, learning_rate=1e-3, warmup_steps=1, height=64, width=64, sample_n_frames=3,
            frame_interval=2, checkpoint_every=2, validation_every=2, gradient_checkpointing=False, seed=3)


@pytest.fixture(scope="module")
def finetuned(prefect_server, tiny_model, clip_inputs, tmp_path_factory):
    from flows.finetune import finetune
    from flows.request import FinetuneRequest

    _, driving = clip_inputs
    root = tmp_path_factory.mktemp("finetune")
    (root / "clips").mkdir()
    (root / "clips" / "take-1.mp4").write_bytes(driving.read_bytes())
    request = FinetuneRequest(clips=str(root / "clips"), model=str(tiny_model), store=str(root / "store"),
                              out=str(root / "model"), **TINY)
    return request, finetune(request), root


def test_finetune_writes_a_model_directory_with_its_card(finetuned):
    from controlnext_video.model_dir import check_model_dir

    request, result, root = finetuned
    assert result["steps"] == 4 and result["resumed_from"] == 0 and np.isfinite(result["final_loss"])
    card = json.loads((root / "model" / "training.json").read_text())
    assert card["steps"] == 4 and len(card["losses"]) == 4 and list(card["data"]) == ["take-1.mp4"]
    assert card["trainable_parameters"] == result["trainable_parameters"] > 0
    check_model_dir(root / "model")  # a complete model directory


def test_monitoring_images_and_resume(finetuned, prefect_server):
    from PIL import Image

    from flows.finetune import finetune, run_prefix

    request, result, root = finetuned
    runs = root / "store" / run_prefix(result["run_id"])
    assert Image.open(runs / "loss.png").size == (640, 320)
    videos = sorted(p.name for p in (runs / "validation").iterdir())
    assert videos == ["step-0000002.mp4", "step-0000004.mp4"]
    again = finetune(request)  # the same request: the finished run is found, nothing trains again
    assert again["run_id"] == result["run_id"] and again["resumed_from"] == 4
    assert again["final_loss"] == result["final_loss"]


def test_the_finetuned_model_renders(finetuned, clip_inputs, tmp_path):
    from flows.render import render

    request, result, root = finetuned
    reference, driving = clip_inputs
    rendered = render(small_request(reference, driving, root / "model", tmp_path / "store", max_frames=8,
                                    output=str(tmp_path / "tuned.mp4")))
    assert rendered["encoded"]["frames"] == 8 and (tmp_path / "tuned.mp4").stat().st_size > 0


def test_loss_curve_and_validation_example():
    import io

    from PIL import Image

    from controlnext_video.training import moving_disc_clip
    from controlnext_video.training.monitor import loss_curve_png, validation_example

    image = Image.open(io.BytesIO(loss_curve_png([1.0, 0.8, 0.9, 0.5])))
    assert image.size == (640, 320) and image.format == "PNG"
    assert Image.open(io.BytesIO(loss_curve_png([]))).size == (640, 320)
    frames, poses = validation_example(moving_disc_clip(12, 48, 0), 5, 32, 64)
    assert frames.shape == poses.shape == (5, 32, 64, 3) and frames.dtype == np.uint8


def test_every_finetune_field_is_an_option():
    import typer

    from flows.cli import app
    from flows.request import FinetuneRequest

    params = {p.name: p for p in typer.main.get_command(app).commands["finetune"].params}
    for field in FinetuneRequest.model_fields:
        assert "--" + field.replace("_", "-") in params[field].opts, field


def test_a_controlnet_model_directory_finetunes_and_renders(prefect_server, clip_inputs, tmp_path):
    """The control design follows the model directory: a ControlNet base fine-tunes as a ControlNet
    branch, and the render flow renders with it, with no setting in either request."""
    from controlnext_video import ControlNeXtSVDPipeline
    from controlnext_video.factory import save_tiny_model
    from flows.finetune import finetune
    from flows.render import render
    from flows.request import FinetuneRequest

    reference, driving = clip_inputs
    base = save_tiny_model(tmp_path / "base", seed=0, control_type="controlnet")
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "take-1.mp4").write_bytes(driving.read_bytes())
    request = FinetuneRequest(clips=str(tmp_path / "clips"), model=str(base), store=str(tmp_path / "store"),
                              out=str(tmp_path / "model"), **dict(TINY, steps=2, validation_every=0))
    result = finetune(request)
    assert np.isfinite(result["final_loss"])
    tuned = ControlNeXtSVDPipeline.from_pretrained(tmp_path / "model")
    assert tuned.controlnext.control_type == "controlnet"
    rendered = render(small_request(reference, driving, tmp_path / "model", tmp_path / "render-store", max_frames=8,
                                    output=str(tmp_path / "tuned.mp4")))
    assert rendered["encoded"]["frames"] == 8 and (tmp_path / "tuned.mp4").stat().st_size > 0


def test_a_multi_condition_model_finetunes_on_pose_and_edges_with_dropout(prefect_server, clip_inputs, tmp_path):
    """The flow extracts the clips' edges (cached), stacks them with the poses in the module's order
    and trains with condition dropout; the result renders a request with both conditions."""
    from controlnext_video import ControlNeXtSVDPipeline
    from controlnext_video.factory import save_tiny_model
    from flows.finetune import finetune
    from flows.render import render
    from flows.request import FinetuneRequest

    reference, driving = clip_inputs
    base = save_tiny_model(tmp_path / "base", seed=0, control_type="controlnext-multi")
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "take-1.mp4").write_bytes(driving.read_bytes())
    request = FinetuneRequest(clips=str(tmp_path / "clips"), model=str(base), store=str(tmp_path / "store"),
                              out=str(tmp_path / "model"), conditions=["pose", "edges"], condition_dropout=0.5,
                              **dict(TINY, steps=2, validation_every=0))
    result = finetune(request)
    assert np.isfinite(result["final_loss"])
    assert list((tmp_path / "store" / "cache" / "conditions").rglob("edges/index.json"))
    tuned = ControlNeXtSVDPipeline.from_pretrained(tmp_path / "model")
    assert tuned.controlnext.control_type == "controlnext-multi"
    rendered = render(small_request(reference, driving, tmp_path / "model", tmp_path / "render-store", max_frames=8,
                                    conditions=["pose", "edges"], output=str(tmp_path / "tuned.mp4")))
    assert rendered["encoded"]["frames"] == 8
