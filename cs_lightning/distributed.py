"""Gathering per-rank results whose sizes differ between ranks (evaluation never pads or repeats samples, so one
rank may hold more examples than another), and training losses normalised over the whole global batch
(:func:`global_mean`). Outside a process group the gathering functions return their input."""

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


def global_mean(total: torch.Tensor, count: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A training loss normalised over the whole global batch: ``total`` is this rank's sum of per-example (or
    per-token) losses, ``count`` what they are a mean over here (examples, tokens, class weights).

    Returns the loss to backpropagate, ``total * world / global count``: data parallelism averages gradients over
    the ranks, which makes the gradient that of ``sum of totals / sum of counts``, the gradient one rank computes
    on the whole global batch, however the examples, tokens or weights fall between the ranks; and that global mean
    itself, detached, the same on every rank (to log). One all-reduce of two numbers on the loss's device, no read
    back to the host; on one rank, no collective and the ordinary mean. A global count of 0 (nothing to learn from)
    gives a loss of 0, not NaN. With gradient accumulation each micro-batch is such a mean over its global batch,
    and Lightning averages the micro-batches, as on one rank.
    """
    world, count, tiny = _world(), count.to(total.dtype), torch.finfo(total.dtype).tiny
    if world == 1:
        loss = total / count.clamp(min=tiny)
        return loss, loss.detach()
    sums = torch.stack([total.detach(), count])
    dist.all_reduce(sums)  # default group, SUM; a device tensor: NCCL queues it on the GPU, no host sync
    denominator = sums[1].clamp(min=tiny)
    return total * (world / denominator), sums[0] / denominator
