"""One pipeline call over the ranks of a process group equals the one-process call bit for bit.

The planning functions are pure; the multi-process tests spawn gloo ranks on the CPU
(`ranks.py`). Every rank and every one-process reference uses one intra-op thread: on the CPU
the thread count changes how a convolution sums, and so the last bits.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from controlnext_video.distributed import (
    decode_frames,
    exchange_bytes_per_step,
    shard,
    speedup_cap,
    split_windows,
)
from controlnext_video.windows import plan_windows

from . import ranks
from .conftest import initial_latents, random_inputs


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(ranks.THREADS)
    yield
    torch.set_num_threads(threads)


def spawn(target, world_size: int, *args) -> None:
    mp.spawn(target, args=(world_size, *args), nprocs=world_size, join=True)


# ------------------------------------------------------------------------------- planning


def test_shard_is_contiguous_and_balanced():
    assert shard(7, 3) == (range(0, 3), range(3, 5), range(5, 7))
    assert shard(2, 3) == (range(0, 1), range(1, 2), range(2, 2))
    for count in range(12):
        for world in range(1, 5):
            runs = shard(count, world)
            assert [i for r in runs for i in r] == list(range(count))
            assert max(map(len, runs)) - min(map(len, runs)) <= 1


def test_split_keeps_the_one_process_batches():
    split = split_windows(13, 2, 4)
    assert split.batches == ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (10, 11), (12,))
    assert split.rank_batches == ((0, 1), (2, 3), (4, 5), (6,))
    assert [split.windows_of(r) for r in range(4)] == [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9, 10, 11), (12,)]
    assert split.windows_per_rank == (4, 4, 4, 1) and split.speedup_cap == 13 / 4
    assert split_windows(13, 2, 4) == split  # deterministic


def test_speedup_cap_of_the_issue():
    """13 windows (240 frames, windows of 24 overlapping by 6) on 8 GPUs: at most 6.5x."""
    assert len(plan_windows(240, 24, 6).windows) == 13
    assert speedup_cap(13, 8) == 6.5 == split_windows(13, 1, 8).speedup_cap
    assert speedup_cap(13, 2) == 13 / 7 and speedup_cap(16, 8) == 8.0


def test_decode_frames_cover_every_frame_once_in_whole_chunks():
    for frames, chunk, world in [(10, 2, 2), (10, 2, 3), (41, 4, 3), (3, 4, 2), (40, 8, 8)]:
        runs = [decode_frames(frames, chunk, world, r) for r in range(world)]
        assert [i for r in runs for i in r] == list(range(frames))
        assert all(r.start % chunk == 0 for r in runs if len(r))


def test_exchange_bytes():
    plan = plan_windows(40, 8, 3)  # windows keep 8 frames (the first) and 7 (the others)
    split = split_windows(len(plan.windows), 1, 3)  # 3, 3, 2 windows: at most 8 + 7 + 7 frames
    assert exchange_bytes_per_step(plan.windows, split, frame_elements=4 * 8 * 8) == 2 * 22 * 256 * 4


def test_bad_split_arguments_are_named():
    with pytest.raises(ValueError, match="windows_per_batch"):
        split_windows(4, 0, 2)
    with pytest.raises(ValueError, match="world_size"):
        shard(4, 0)


# ------------------------------------------------------------------------------- one rank, in process


@pytest.fixture
def group_of_one():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1, timeout=timedelta(seconds=60))
    try:
        yield dist.group.WORLD
    finally:
        dist.destroy_process_group()


def test_a_group_of_one_gives_the_same_bits(tiny_pipe, group_of_one):
    n, h, w = 7, 64, 64
    ref, poses = random_inputs(n, h, w)
    args = dict(num_inference_steps=2, window_size=4, overlap=1, decode_chunk_size=3)
    results = [
        [tiny_pipe(ref, poses, latents=initial_latents(tiny_pipe, n, h, w), generator=torch.Generator().manual_seed(0),
                   output_type=kind, process_group=group, **args) for kind in ("latent", "np")]
        for group in (None, group_of_one)
    ]
    (latents, frames), (group_latents, group_frames) = results
    assert torch.equal(latents, group_latents)
    assert (frames == group_frames).all() and frames.shape == (n, h, w, 3)


def test_a_group_of_one_gives_the_same_bits_with_the_corrector_and_churn(tiny_pipe, group_of_one):
    n, h, w = 4, 32, 32
    ref, poses = random_inputs(n, h, w)
    args = dict(num_inference_steps=2, window_size=3, overlap=1, output_type="latent", corrector_steps=1, s_churn=1.0,
                frame_indices=(0, 9, 10, 11))
    latents, group_latents = [
        tiny_pipe(ref, poses, latents=initial_latents(tiny_pipe, n, h, w), generator=torch.Generator().manual_seed(0),
                  process_group=group, **args)
        for group in (None, group_of_one)
    ]
    assert torch.equal(latents, group_latents)


# ------------------------------------------------------------------------------- several ranks


@pytest.mark.e2e
@pytest.mark.parametrize("world_size", [2, 3])
def test_sampler_over_ranks_equals_one_process(world_size, tmp_path, one_thread):
    """Batches of 1-4 windows, idle ranks (more ranks than batches), 5 to 40 frames."""
    spawn(ranks.sampler_rank, world_size, tmp_path)
    expected = ranks.sampler_results()
    for rank in range(world_size):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for name, latents in expected.items():
            assert torch.equal(got[name], latents), (rank, name, (got[name] - latents).abs().max().item())


@pytest.mark.e2e
def test_ranks_given_other_latents_all_refuse(tmp_path):
    spawn(ranks.sampler_rank, 2, tmp_path, 0.0, 120.0, True)
    for rank in range(2):
        outcome = json.loads((tmp_path / f"rank{rank}.json").read_text())["outcome"]
        assert outcome.startswith("ValueError: initial latents differ between the ranks"), outcome


@pytest.mark.e2e
def test_a_stalled_rank_fails_the_others_within_the_timeout(tmp_path):
    timeout, stall = 3.0, 20.0
    spawn(ranks.sampler_rank, 2, tmp_path, stall, timeout)
    waiting = json.loads((tmp_path / "rank0.json").read_text())
    # it gave up on the stalled peer before that peer came back (the collective timeout, not the
    # peer, ended the wait; the margin is wide because a loaded machine stretches every wait)
    assert waiting["outcome"] != "finished" and waiting["seconds"] < stall, waiting
    assert "timed out" in waiting["outcome"].lower() or "timeout" in waiting["outcome"].lower(), waiting


@pytest.mark.e2e
@pytest.mark.parametrize("world_size", [2, 3])
def test_pipeline_over_ranks_equals_one_process(world_size, shared_dir, tmp_path, one_thread):
    """The parity fixture's settings and a 40-frame clip (windows of 8 overlapping by 3): final
    latents and decoded frames bit-identical on every rank."""
    from controlnext_video import ControlNeXtSVDPipeline

    spawn(ranks.pipeline_rank, world_size, tmp_path, shared_dir)
    pipe = ControlNeXtSVDPipeline.from_pretrained(shared_dir / "fixtures" / "controlnext-svd-tiny")
    expected = ranks.run_cases(pipe, shared_dir)
    for rank in range(world_size):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for name, value in expected.items():
            assert torch.equal(got[name], value), (rank, name, (got[name] - value).abs().max().item())
