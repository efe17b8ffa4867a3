"""Adapters through ``peft`` (LoRA, DoRA, (IA)³): the base weights stay frozen, small added weights and the task head
train. A thin wrap of peft's own vocabulary (``LoraConfig``, ``IA3Config``, ``get_peft_model``); this module adds only
what cs-lightning decides:

- :func:`adapter_settings`: ``model.peft`` checked in one line per mistake, before any weights load;
- :func:`default_targets`: the attention and MLP projections, found in the model itself (the Linear/Conv1D layers
  of its blocks, by name: ``query/key/value/dense`` for BERT, ``c_attn/c_proj/c_fc`` for GPT-2, ``q/k/v/o/wi/wo`` for
  T5, ``q_proj ... down_proj`` for Llama and Qwen2), so every family and plugin gets them without a table;
- :func:`head_modules`: an intent model's head (what lies outside ``model.base_model``), trained in full
  (``modules_to_save``); a reply model's speaker markers train as token rows (``trainable_token_indices``, LoRA);
- :func:`base_fingerprint` and :func:`check_checkpoint`: adapter checkpoints hold no base weights, only where they
  come from and a hash of them, checked when the checkpoint is loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import warnings

import torch
from torch import nn

from cs_lightning.backbones.generic import block_stacks
from cs_lightning.errors import ConfigError

METHODS = ("lora", "dora", "ia3")
KEYS = ("method", "r", "alpha", "dropout", "target_modules")
LORA_DEFAULTS = {"r": 8, "alpha": 16, "dropout": 0.05}
#: the seed the base model is built under when adapters train: weights the source does not give (a base built from
#: scratch, rows added for new tokens) come out the same in every process, so a checkpoint without them can be rebuilt
BASE_SEED = 0
_ATTENTION = re.compile(r"att", re.IGNORECASE)  # attention, attn, self_attn, SelfAttention, EncDecAttention


def adapter_settings(peft: dict | None) -> dict | None:
    """``model.peft`` with LoRA's defaults filled in, or None (full fine-tuning).

    Raises:
        ConfigError: not a mapping, an unknown key or method, a value out of range, (IA)³ given a rank.
    """
    if peft is None:
        return None
    if not isinstance(peft, dict):
        raise ConfigError("model.peft", f"expected a mapping such as {{method: lora, r: 8}}, got {peft!r}",
                          "or null for full fine-tuning")
    unknown = sorted(set(peft) - set(KEYS))
    if unknown:
        raise ConfigError(f"model.peft.{unknown[0]}", "unknown setting", f"the settings are {', '.join(KEYS)}")
    method = peft.get("method")
    if method not in METHODS:
        problem = "missing" if method is None else f"unknown method {method!r}"
        raise ConfigError("model.peft.method", problem, f"choose one of {', '.join(METHODS)}")
    settings: dict = {"method": method}
    if method == "ia3":
        given = [key for key in LORA_DEFAULTS if peft.get(key) is not None]
        if given:
            raise ConfigError(f"model.peft.{given[0]}", "(IA)³ learns scaling vectors: it has no rank, alpha or "
                                                        "dropout", "remove it, or use method lora or dora")
    else:
        settings.update({key: peft[key] if peft.get(key) is not None else default
                         for key, default in LORA_DEFAULTS.items()})
        if isinstance(settings["r"], bool) or not isinstance(settings["r"], int) or settings["r"] < 1:
            raise ConfigError("model.peft.r", f"the rank must be a whole number >= 1, got {settings['r']!r}")
        if isinstance(settings["alpha"], bool) or not isinstance(settings["alpha"], (int, float)) \
                or settings["alpha"] <= 0:
            raise ConfigError("model.peft.alpha", f"must be a positive number, got {settings['alpha']!r}",
                              "LoRA scales its update by alpha / r; 2 * r is the usual choice")
        if not isinstance(settings["dropout"], (int, float)) or not 0 <= settings["dropout"] < 1:
            raise ConfigError("model.peft.dropout", f"must be in [0, 1), got {settings['dropout']!r}")
    targets = peft.get("target_modules")
    if isinstance(targets, str):
        targets = [targets]
    if targets is not None and (not isinstance(targets, list) or not targets
                                or not all(isinstance(t, str) and t for t in targets)):
        raise ConfigError("model.peft.target_modules", f"expected a list of module names, got {targets!r}",
                          "for example [query, value], or null for the attention and MLP projections")
    settings["target_modules"] = list(targets) if targets else None
    return settings


@contextlib.contextmanager
def base_seed():
    """Builds under :data:`BASE_SEED`, leaving the run's random state as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(BASE_SEED)
        yield


def _is_projection(module: nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D  # GPT-2's transposed Linear

    return isinstance(module, (nn.Linear, Conv1D))


def projections(model: nn.Module) -> list[tuple[str, bool]]:
    """``(path inside its block, is attention)`` of every Linear/Conv1D layer of the first block of each stack of
    identical blocks in ``model.base_model``; without such stacks, of every one in the base model but the output
    embeddings."""
    base = model.base_model
    stacks = block_stacks(base)
    if stacks:
        found = [(path, m) for _, stack in stacks for path, m in stack[0].named_modules() if _is_projection(m)]
    else:
        output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        found = [(path, m) for path, m in base.named_modules() if _is_projection(m) and m is not output]
    seen: dict[str, bool] = {}
    for path, _ in found:
        seen.setdefault(path, bool(_ATTENTION.search(path.rpartition(".")[0])))
    return list(seen.items())


def default_targets(model: nn.Module) -> list[str]:
    """The attention and MLP projections by their own names, in model order (peft matches a name as the last part
    of a module's path)."""
    return list(dict.fromkeys(path.rpartition(".")[2] for path, _ in projections(model)))


def head_modules(model: nn.Module) -> list[str]:
    """The children of ``model`` outside its base model that hold parameters: an intent model's head
    (``classifier``, ``score``, ``classification_head``, ``pre_classifier``...)."""
    base = model.base_model
    if base is model:
        return []
    return [name for name, child in model.named_children()
            if child is not base and next(child.parameters(), None) is not None]


def _holding_parameters(model: nn.Module, head: list[str]) -> list[str]:
    """The modules under ``head`` that hold parameters themselves (``classifier.dense``, ``classifier.out_proj`` of
    RoBERTa's head): peft saves them one by one. A whole head without weights of its own (RoBERTa's, T5's) breaks
    peft's merge for (IA)³ (peft 0.21 copies ``weight`` from the module it unwraps)."""
    return [f"{name}.{path}" if path else name for name in head
            for path, m in model.get_submodule(name).named_modules() if next(m.parameters(False), None) is not None]


def _matches(path: str, target: str) -> bool:
    """peft's rule for a name in ``target_modules``: the whole path, or its end after a dot."""
    return path == target or path.endswith(f".{target}")


def check_targets(model: nn.Module, targets: list[str]) -> None:
    """Every name in ``targets`` names at least one module of ``model``."""
    paths = [path for path, _ in model.named_modules()]
    for target in targets:
        if not any(_matches(path, target) for path in paths):
            raise ConfigError("model.peft.target_modules", f"'{target}' matches no module of {type(model).__name__}",
                              f"its projections are {', '.join(default_targets(model)[:8])}; or leave "
                              "target_modules unset for the attention and MLP projections")


def base_fingerprint(model: nn.Module, skip: list[str]) -> str | None:
    """SHA-256 of the model's weights (names, dtypes, shapes and bytes, in name order), the modules in ``skip``
    (the head, saved with the adapters) left out; None for a model on the meta device (built only to be measured,
    as ``cs-doctor --config`` does: it has shapes, no bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if name.split(".")[0] in skip:
            continue
        if tensor.is_meta:
            return None
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)};".encode())
        digest.update(flat.view(torch.uint8).numpy())
    return digest.hexdigest()


def apply_adapters(model: nn.Module, settings: dict, kind: str, head: list[str], token_ids: list[int]):
    """``peft.get_peft_model`` on ``model``: LoRA (DoRA: ``use_dora``) or (IA)³ on ``settings['target_modules']`` or
    :func:`default_targets`, the ``head`` modules trained in full, LoRA's ``token_ids`` rows of the input embeddings
    trained.

    Args:
        model: the Hugging Face model, as the backbone built it.
        settings: from :func:`adapter_settings`.
        kind: ``intent``, ``causal`` or ``seq2seq`` (peft's task type; none for intents).
        head: top-level modules trained and saved in full (``modules_to_save``).
        token_ids: token ids whose embedding rows train (LoRA and DoRA only).

    Returns:
        ``(peft model, target names)``.
    """
    from peft import IA3Config, LoraConfig, TaskType, get_peft_model
    from transformers.pytorch_utils import Conv1D

    targets = settings["target_modules"] or default_targets(model)
    check_targets(model, targets)
    transposed = any(isinstance(m, Conv1D) and any(_matches(path, t) for t in targets)
                     for path, m in model.named_modules())
    # intents take no task type: peft's SEQ_CLS would add whole ``classifier``/``score`` modules to what it saves
    common = dict(target_modules=list(targets), modules_to_save=_holding_parameters(model, head) or None,
                  fan_in_fan_out=transposed,
                  task_type={"intent": None, "causal": TaskType.CAUSAL_LM, "seq2seq": TaskType.SEQ_2_SEQ_LM}[kind])
    if settings["method"] == "ia3":
        # the MLP layers scale their input, the attention layers their output (the paper's recipe); by path inside
        # a block, since one name can be both (BERT's dense, GPT-2's c_proj)
        mlp = [path for path, attention in projections(model) if not attention]
        feedforward = rf".*\.\d+\.(?:{'|'.join(map(re.escape, mlp))})" if mlp else []
        config = IA3Config(feedforward_modules=feedforward, **common)
    else:
        config = LoraConfig(r=settings["r"], lora_alpha=settings["alpha"], lora_dropout=settings["dropout"],
                            use_dora=settings["method"] == "dora", trainable_token_indices=list(token_ids) or None,
                            **common)
    try:
        with warnings.catch_warnings():  # peft asks transformers 5 by the old name; nothing for a user to do
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
            return get_peft_model(model, config), targets
    except (ValueError, TypeError) as err:  # peft's own word on a target it cannot adapt
        raise ConfigError("model.peft.target_modules", str(err).splitlines()[0][:200],
                          f"use Linear layers such as {', '.join(default_targets(model)[:8])}") from None


def check_checkpoint(recorded: dict | None, current: dict | None) -> None:
    """Refuse, in one line, a checkpoint whose adapters do not fit the model built to load it: adapters into a
    fully fine-tuned model or the reverse, or adapters onto other base weights than they were trained on.

    Args:
        recorded: the checkpoint's ``cs_lightning.adapters`` record (None: a full fine-tuning checkpoint).
        current: the same record of the model built now (None: no ``model.peft``).
    """
    if recorded is None and current is None:
        return
    if current is None:
        raise ConfigError("model.peft", f"the checkpoint holds {recorded['method']} adapters, not a whole model, but "
                                        "model.peft is null", "set model.peft as in the run that wrote it")
    if recorded is None:
        raise ConfigError("model.peft", "the checkpoint holds a fully fine-tuned model, not adapters",
                          "set model.peft: null to load it")
    was, now = recorded["base"], current["base"]
    if was["sha256"] != now["sha256"]:
        where = was.get("model_name_or_path") or f"the '{was.get('model_size')}' config built from scratch"
        raise ConfigError("model.model_name_or_path",
                          f"the base weights differ from those the adapters were trained on (sha256 "
                          f"{now['sha256'][:12]} now, {was['sha256'][:12]} in the checkpoint)",
                          f"load the checkpoint on the weights it was trained on: {where}")
