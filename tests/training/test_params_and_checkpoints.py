"""What trains, and checkpoints in the artifact store."""

from __future__ import annotations

import pytest
import torch

from controlnext_video.factory import tiny_components
from controlnext_video.training import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    select_trainable,
)
from controlnext_video.training.checkpoint import checkpoint_key, restore_trainable
from controlnext_video.training.params import count_parameters


@pytest.fixture(scope="module")
def parts():
    return tiny_components(seed=0)


@pytest.fixture
def store(tmp_path):
    from storage import ArtifactStore

    return ArtifactStore(tmp_path / "store")


@pytest.mark.parametrize("mode", ["none", "selective", "all"])
def test_selection(parts, mode):
    unet, controlnext = parts["unet"], parts["controlnext"]
    trainable = select_trainable(unet, controlnext, mode)
    control_names = {f"controlnext.{n}" for n, _ in controlnext.named_parameters()}
    unet_names = {n for n in trainable if n.startswith("unet.")}
    assert control_names <= set(trainable)
    if mode == "none":
        assert not unet_names
    elif mode == "selective":
        assert unet_names and all(".to_v." in n or ".to_out." in n for n in unet_names)
        every = {f"unet.{n}" for n, _ in unet.named_parameters() if ".to_v." in n or ".to_out." in n}
        assert unet_names == every
    else:
        assert len(unet_names) == len(list(unet.parameters()))
    assert {n for n, p in unet.named_parameters() if p.requires_grad} == {n[5:] for n in unet_names}
    assert all(p.requires_grad for p in controlnext.parameters())
    assert count_parameters(trainable) == sum(p.numel() for p in trainable.values())
    with pytest.raises(ValueError, match="unet_training"):
        select_trainable(unet, controlnext, "lora")


def _params(seed: int = 0) -> dict[str, torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return {"controlnext.w": torch.nn.Parameter(torch.randn(3, 2, generator=gen)),
            "unet.b": torch.nn.Parameter(torch.randn(4, generator=gen))}


def _save(store, step, params, keep=2):
    opt = torch.optim.AdamW(list(params.values()), lr=1e-3)
    sum(p.sum() for p in params.values()).backward()
    opt.step()
    return save_checkpoint(
        store, "run/checkpoints", step=step, trainable=params, optimizer=opt.state_dict(),
        lr_scheduler={"last_epoch": step, "base_lrs": [1e-3]}, state={"losses": [0.5] * step}, keep=keep,
    ), opt


def test_round_trip(store):
    params = _params()
    key, opt = _save(store, 3, params)
    assert latest_checkpoint(store, "run/checkpoints") == key == checkpoint_key("run/checkpoints", 3)
    loaded = load_checkpoint(store, key)
    assert loaded.step == 3 and loaded.state["losses"] == [0.5] * 3
    assert loaded.lr_scheduler == {"last_epoch": 3, "base_lrs": [1e-3]}
    fresh = _params(seed=1)
    restore_trainable(fresh, loaded.trainable, key)
    assert all(torch.equal(fresh[n], params[n]) for n in params)
    new_opt = torch.optim.AdamW(list(fresh.values()), lr=1e-3)
    new_opt.load_state_dict(loaded.optimizer)
    for a, b in zip(new_opt.state.values(), opt.state.values()):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_keeps_the_last_k_and_ignores_incomplete_ones(store):
    params = _params()
    for step in (2, 4, 6):
        _save(store, step, params, keep=2)
    assert store.children("run/checkpoints") == ["step-000000004", "step-000000006"]
    # A checkpoint whose state.json never got written (a killed process) does not count.
    store.write_bytes(f"{checkpoint_key('run/checkpoints', 8)}/trainable.safetensors", b"partial")
    assert latest_checkpoint(store, "run/checkpoints") == checkpoint_key("run/checkpoints", 6)
    assert latest_checkpoint(store, "elsewhere") is None


def test_corrupt_or_foreign_checkpoints_are_refused(store):
    params = _params()
    key, _ = _save(store, 2, params)
    store.write_bytes(f"{key}/trainable.safetensors", b"not what was written")
    with pytest.raises(CheckpointError, match="hash"):
        load_checkpoint(store, key)
    other = {"controlnext.w": torch.nn.Parameter(torch.zeros(3, 2))}
    with pytest.raises(CheckpointError, match="unet.b"):
        restore_trainable(other, {k: v.detach() for k, v in params.items()}, key)
