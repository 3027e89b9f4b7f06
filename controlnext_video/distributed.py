"""One pipeline call spread over the processes of a `torch.distributed` group, exactly.

The windows of every denoising step are independent given the step's latents, so they can be
denoised on different processes (one per GPU). To give the single-process result bit for bit:

- the windows are split in the *batches* one process would use (`windows_per_batch` windows
  per UNet call), so every UNet call has the same shapes as on one process;
- batches go to ranks in contiguous, balanced runs (`split_windows`): a pure function of the
  window count, the batch size and the world size, the same on every rank;
- every step, each rank's guided outputs (the frames each window keeps) are all-gathered, a
  plain copy, and every rank adds them up per frame in window order, as the one-process sampler
  does (an all-reduce would add in another order and change the last bits), then takes the same
  scheduler step;
- decoding splits the frames in whole decode chunks (`decode_frames`): chunks are independent
  given the final latents.

Timeouts are the process group's (`init_process_group(timeout=...)` or `new_group(timeout=...)`):
a rank that dies or hangs makes the others' next collective fail within that time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class WindowSplit:
    """The windows of a plan in single-process batches, the batches split over ranks.

    `batches[b]` holds window indices (consecutive), `rank_batches[r]` batch indices (consecutive).
    """

    num_windows: int
    windows_per_batch: int
    batches: tuple[tuple[int, ...], ...]
    rank_batches: tuple[tuple[int, ...], ...]

    @property
    def world_size(self) -> int:
        return len(self.rank_batches)

    def windows_of(self, rank: int) -> tuple[int, ...]:
        """Window indices rank `rank` denoises, in window order."""
        return tuple(w for b in self.rank_batches[rank] for w in self.batches[b])

    @property
    def windows_per_rank(self) -> tuple[int, ...]:
        return tuple(len(self.windows_of(r)) for r in range(self.world_size))

    @property
    def speedup_cap(self) -> float:
        """Upper bound of the speed-up over one process: total windows / the busiest rank's."""
        return self.num_windows / max(self.windows_per_rank)


def shard(count: int, world_size: int) -> tuple[range, ...]:
    """`range(count)` cut into `world_size` contiguous runs whose lengths differ by at most one
    (the first runs take the extra items)."""
    if count < 0 or world_size < 1:
        raise ValueError(f"need count >= 0 and world_size >= 1, got {count} and {world_size}")
    base, extra = divmod(count, world_size)
    starts = [r * base + min(r, extra) for r in range(world_size + 1)]
    return tuple(range(starts[r], starts[r + 1]) for r in range(world_size))


def split_windows(num_windows: int, windows_per_batch: int, world_size: int) -> WindowSplit:
    """Split `num_windows` windows, batched `windows_per_batch` at a time as one process batches
    them, over `world_size` ranks: contiguous runs of batches, balanced in batch count."""
    if num_windows < 1:
        raise ValueError(f"num_windows must be at least 1, got {num_windows}")
    if windows_per_batch < 1:
        raise ValueError(f"windows_per_batch must be at least 1, got {windows_per_batch}")
    batches = tuple(tuple(range(s, min(s + windows_per_batch, num_windows)))
                    for s in range(0, num_windows, windows_per_batch))
    return WindowSplit(num_windows, windows_per_batch, batches,
                       tuple(tuple(run) for run in shard(len(batches), world_size)))


def speedup_cap(num_windows: int, world_size: int) -> float:
    """W / ceil(W / G): the best speed-up of W windows (one per UNet call) on G ranks."""
    return num_windows / math.ceil(num_windows / world_size)


def decode_frames(num_frames: int, decode_chunk_size: int, world_size: int, rank: int) -> range:
    """The frames rank `rank` decodes: a contiguous run of whole decode chunks (the chunks one
    process would decode), balanced in chunk count over the ranks."""
    if decode_chunk_size < 1:
        raise ValueError(f"decode_chunk_size must be at least 1, got {decode_chunk_size}")
    chunks = shard(math.ceil(num_frames / decode_chunk_size), world_size)[rank]
    return range(min(chunks.start * decode_chunk_size, num_frames), min(chunks.stop * decode_chunk_size, num_frames))


def kept_frames(windows: Sequence, indices: Sequence[int]) -> int:
    """Frames that the given windows contribute to the per-frame average (what a rank sends)."""
    return sum(windows[i].stop - windows[i].keep_from for i in indices)


def exchange_bytes_per_step(windows: Sequence, split: WindowSplit, frame_elements: int, element_size: int = 4) -> int:
    """Bytes one rank receives per denoising step: an all-gather of every other rank's kept
    outputs, each padded to the largest rank's (what `sample_windows` sends; a ring all-gather
    sends as much as it receives)."""
    largest = max(kept_frames(windows, split.windows_of(r)) for r in range(split.world_size))
    return (split.world_size - 1) * largest * frame_elements * element_size


def rank_and_size(group) -> tuple[int, int]:
    return dist.get_rank(group), dist.get_world_size(group)


def _comm_device(group, device: torch.device) -> torch.device:
    """Where a collective's tensors must be: NCCL's on a GPU (this rank's current one for a
    tensor on the CPU), the other backends' (gloo) on the CPU."""
    if dist.get_backend(group) != "nccl":
        return torch.device("cpu")
    return device if device.type == "cuda" else torch.device("cuda", torch.cuda.current_device())


def all_gather_uneven(tensor: torch.Tensor, sizes: Sequence[int], group) -> list[torch.Tensor]:
    """Every rank's 1-D `tensor` (rank r's has `sizes[r]` elements, known to all), gathered on
    every rank: a plain copy, padded to the largest size for the collective.

    Shapes: `(sizes[rank],)` -> a list of `(sizes[r],)`, on `tensor`'s device.
    """
    rank, world = rank_and_size(group)
    if tensor.dim() != 1 or tensor.numel() != sizes[rank]:
        raise ValueError(f"rank {rank}: expected a 1-D tensor of {sizes[rank]} elements, got {tuple(tensor.shape)}")
    device = _comm_device(group, tensor.device)
    largest = max(sizes)
    send = torch.zeros(largest, dtype=tensor.dtype, device=device)
    send[: tensor.numel()] = tensor
    received = [torch.empty_like(send) for _ in range(world)]
    dist.all_gather(received, send, group=group)
    return [part[:size].to(tensor.device) for part, size in zip(received, sizes, strict=True)]


def check_same_on_all_ranks(tensor: torch.Tensor, group, what: str) -> None:
    """Raise on every rank (not only the odd one, which would leave the others waiting) unless
    `tensor` is bit-identical on all ranks; ranks must be called with the same arguments."""
    rank, _ = rank_and_size(group)
    device = _comm_device(group, tensor.device)
    reference = tensor.detach().to(device, copy=True).contiguous()
    dist.broadcast(reference, src=dist.get_global_rank(group, 0), group=group)
    differs = torch.tensor([0.0 if torch.equal(reference, tensor.detach().to(device)) else 1.0], device=device)
    dist.all_reduce(differs, op=dist.ReduceOp.MAX, group=group)
    if differs.item():
        raise ValueError(f"{what} differ between the ranks of the process group (rank {rank} sees it too): call the "
                         "pipeline with the same arguments, latents and generator seed on every rank")


def agree_on_minimum(value: int, group, device: torch.device) -> int:
    """The smallest `value` over the ranks (e.g. windows per UNet call planned from each GPU's memory)."""
    device = _comm_device(group, device)
    smallest = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(smallest, op=dist.ReduceOp.MIN, group=group)
    return int(smallest.item())
