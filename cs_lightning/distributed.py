"""Gathering per-rank results whose sizes differ between ranks (evaluation never pads or repeats samples, so one
rank may hold more examples than another). Outside a process group both functions return their input."""

from __future__ import annotations

import torch
import torch.distributed as dist


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenates along dim 0 the tensors of every rank (rank order), whatever their lengths."""
    world = _world()
    if world == 1:
        return tensor
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = tensor.new_zeros((longest, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([part[: int(n.item())] for part, n in zip(parts, sizes)])


def gather_lists(items: list) -> list:
    """Concatenates the (picklable) lists of every rank, in rank order."""
    world = _world()
    if world == 1:
        return items
    parts: list = [None] * world
    dist.all_gather_object(parts, items)
    return [item for part in parts for item in part]
