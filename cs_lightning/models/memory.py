"""How much memory training holds for the weights, their gradients and the optimizer's state: from the parameters
(counted, never read: a model on the meta device will do) and the trainer's precision. Activations, which grow with
the batch size and the sequence length, are not in it, nor the CUDA context and the allocator's slack.

What Lightning 2.6's precision plugins do to the weights, and so what is counted:

- ``32-true``: nothing is converted; every parameter trains in its own dtype (float32, unless the weights were
  loaded in another one: transformers 5 loads the dtype a model's config.json names);
- ``16-mixed``, ``bf16-mixed``: nothing is converted either (the float32 weights are the master copy) and
  ``torch.autocast`` casts them op by op, its cache off: no half-precision copies are kept, so weights, gradients and
  optimizer state take what they take in ``32-true``; the saving is in the activations;
- ``16-true``, ``bf16-true``: the module is converted (``module.to(float16 / bfloat16)``): weights, gradients and
  AdamW's state (torch keeps it in each parameter's dtype) all take 2 bytes a value;
- ``64-true``: converted to float64;
- ``transformer-engine`` / ``transformer-engine-float16``: converted to bfloat16 / float16 (FP8 is used inside the
  matrix multiplications only);
- any other precision (a plugin's own): counted in the parameters' own dtypes, and said so.

Gradients exist for trainable parameters only, in their dtype; AdamW keeps two tensors of each trainable parameter's
size and dtype (``exp_avg``, ``exp_avg_sq``), plus a scalar step count each, left out. Frozen parameters (adapters'
base weights, frozen blocks) count as weights only. DDP keeps a full replica on every GPU (and its gradient buckets,
about one more copy of the gradients); FSDP and DeepSpeed shard them (:meth:`MemoryEstimate.lines`, ``shards``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

#: precisions under which Lightning converts the module, and to what
CONVERTED: dict[str, torch.dtype] = {
    "16-true": torch.float16,
    "bf16-true": torch.bfloat16,
    "64-true": torch.float64,
    "transformer-engine": torch.bfloat16,
    "transformer-engine-float16": torch.float16,
}
#: precisions under which the weights stay as they are (mixed precision autocasts per operation)
KEPT = ("32-true", "16-mixed", "bf16-mixed")
#: Lightning's short names (``Trainer(precision=16)`` is 16-mixed)
ALIASES = {"16": "16-mixed", "32": "32-true", "64": "64-true", "bf16": "bf16-mixed"}
#: AdamW's state per trainable parameter: exp_avg and exp_avg_sq
ADAMW_STATES = 2
_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16",
                torch.float64: "float64"}


def normalize_precision(precision: str | int | None) -> str:
    """Lightning's name of ``precision``: aliases (``16``, ``"bf16"``...) resolved, None is its default (32-true)."""
    if precision is None:
        return "32-true"
    text = str(precision)
    return ALIASES.get(text, text)


def format_bytes(n: float) -> str:
    """Decimal units, as GPUs are sold (a "16 GB" card): ``1.23 GB``, ``96.3 MB``, ``12.0 kB``."""
    if n >= 1e9:
        return f"{n / 1e9:.2f} GB"
    if n >= 1e6:
        return f"{n / 1e6:.1f} MB"
    return f"{n / 1e3:.1f} kB"


@dataclass(frozen=True)
class MemoryEstimate:
    """Parameter counts and the bytes training holds for them.

    Attributes:
        precision: the trainer's precision, as Lightning names it.
        trainable: parameters that train (``requires_grad``).
        total: all parameters (a tensor shared by two modules once).
        weights: bytes of all parameters, in the dtype they train in.
        gradients: bytes of the trainable parameters' gradients.
        optimizer: bytes of the optimizer's state (AdamW: two tensors per trainable parameter).
        dtypes: the dtypes the parameters train in, e.g. ``("float32",)``.
        known_precision: False when ``precision`` is none Lightning names: the dtypes are then the parameters' own.
    """

    precision: str
    trainable: int
    total: int
    weights: int
    gradients: int
    optimizer: int
    dtypes: tuple[str, ...] = ()
    known_precision: bool = True

    @property
    def bytes(self) -> int:
        """Weights, gradients and optimizer state together."""
        return self.weights + self.gradients + self.optimizer

    def per_device(self, shards: int = 1) -> int:
        """Bytes on each device when a sharding strategy (FSDP, DeepSpeed) splits them over ``shards`` devices."""
        return -(-self.bytes // max(1, shards))

    def lines(self, shards: int = 1) -> list[str]:
        """Two lines for a person: the parameter counts, and the memory with its parts.

        Args:
            shards: devices FSDP or DeepSpeed split weights, gradients and optimizer state over (1: each device holds
                them all, as with one GPU or DDP).
        """
        share = f"{100 * self.trainable / self.total:.3g}%" if self.total else "0%"
        dtypes = "/".join(self.dtypes) or "no parameters"
        if not self.known_precision:
            dtypes += (f"; '{self.precision}' is not a precision cs-lightning knows: counted in the parameters' own "
                       "dtypes")
        size = format_bytes(self.bytes)
        if shards > 1:
            size += f", sharded over {shards} devices: {format_bytes(self.per_device(shards))} each"
        return [f"Parameters: {self.trainable:,} trainable of {self.total:,} ({share})",
                f"Memory for weights, gradients and AdamW state in {self.precision} ({dtypes}): {size} = weights "
                f"{format_bytes(self.weights)} + gradients {format_bytes(self.gradients)} + AdamW "
                f"{format_bytes(self.optimizer)} (activations not included)"]

    def as_dict(self) -> dict:
        """Plain values, for JSON."""
        return {"precision": self.precision, "dtypes": list(self.dtypes), "known_precision": self.known_precision,
                "parameters": {"trainable": self.trainable, "total": self.total},
                "bytes": {"weights": self.weights, "gradients": self.gradients, "optimizer": self.optimizer,
                          "total": self.bytes}}


def training_dtype(param: torch.Tensor, precision: str) -> torch.dtype:
    """The dtype ``param`` trains in under ``precision`` (Lightning's name): the converted one for the ``*-true``
    half and double precisions and Transformer Engine (floating-point parameters only, as ``module.to`` does), its
    own otherwise."""
    target = CONVERTED.get(precision)
    return target if target is not None and param.is_floating_point() else param.dtype


def estimate_memory(parameters: nn.Module | Iterable[torch.Tensor], precision: str | int | None = "32-true",
                    optimizer_states: int = ADAMW_STATES) -> MemoryEstimate:
    """Parameter counts and the bytes of weights, gradients and optimizer state, for training under ``precision``.

    Args:
        parameters: a module (each parameter once, shared ones too) or the parameters themselves; on any device,
            the meta device included (nothing is read).
        precision: the trainer's precision (``trainer.precision``: 32-true, 16-mixed, bf16-mixed, 16-true,
            bf16-true, 64-true, transformer-engine...), a Lightning alias (16, 32, 64, bf16) or None (32-true).
        optimizer_states: tensors the optimizer keeps per trainable parameter, each of its size and dtype: 2 for
            AdamW and Adam, 1 for SGD with momentum.

    Returns:
        The estimate; activations are not in it.
    """
    precision = normalize_precision(precision)
    params = parameters.parameters() if isinstance(parameters, nn.Module) else parameters
    unique = list({id(p): p for p in params}.values())
    trainable = total = weights = gradients = 0
    dtypes: dict[torch.dtype, None] = {}
    for p in unique:
        dtype = training_dtype(p, precision)
        size = p.numel() * dtype.itemsize
        dtypes[dtype] = None
        total += p.numel()
        weights += size
        if p.requires_grad:
            trainable += p.numel()
            gradients += size
    optimizer = gradients * optimizer_states
    names = tuple(_DTYPE_NAMES.get(d, str(d).replace("torch.", "")) for d in dtypes)
    return MemoryEstimate(precision, trainable, total, weights, gradients, optimizer, names,
                          known_precision=precision in KEPT or precision in CONVERTED)
