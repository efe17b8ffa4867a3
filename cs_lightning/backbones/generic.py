"""The generic family: any architecture in :data:`FAMILIES`, through ``AutoModelForSequenceClassification`` (intent)
and ``AutoModelForCausalLM`` / ``AutoModelForSeq2SeqLM`` (reply), chosen by its Hugging Face ``model_type``.

``backbone: auto`` picks an installed plugin made for the weights' model type (``bert``, ``gpt``, ``t5``...) and
falls back to this family for the other covered types (:func:`cs_lightning.registry.resolve_backbone`);
``backbone: generic`` always takes it. Models built from scratch name their type with ``model.model_type``.

What differs between families is data, not code:

- :data:`SIZES`: ``tiny`` / ``small`` / ``base`` in the standard config names (``hidden_size``,
  ``num_hidden_layers``, ``num_attention_heads``, ``intermediate_size``, and ``num_key_value_heads``,
  ``embedding_size`` and ``head_dim`` for the families that have them); each :class:`Family` maps them to its own
  config's names (``n_embd`` for GPT-2, ``d_model``/``d_ff``/``d_kv`` and the decoder's layer count for T5...) and
  adds the settings it needs (``config``);
- the tokenizer kind trained when none is given (:mod:`cs_lightning.tokenization`), with the special tokens and the
  post-processor the family's heads read, and whether the family reads token type ids;
- the reply kind (``causal`` or ``seq2seq``), or none for encoders, which only classify.

Layer groups are discovered from the model (:func:`discover_layer_groups`), not from attribute names.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from cs_lightning.backbones.base import Backbone, LayerGroup
from cs_lightning.errors import ConfigError
from cs_lightning.pretrained import ModelSource, read_model_type

#: architecture sizes in the standard config names; ``head_dim`` is derived (hidden_size / num_attention_heads)
SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                 num_key_value_heads=1, embedding_size=16),
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
                  num_key_value_heads=2, embedding_size=128),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                 num_key_value_heads=4, embedding_size=768),
}
#: the standard names every family sets, under the same name unless its ``names`` say otherwise
STANDARD = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")


@dataclass(frozen=True)
class Family:
    """What the generic backbone needs to know about one model type.

    Args:
        tokenizer: the tokenizer kind trained when none is given (``cs_lightning.tokenization.KINDS``).
        reply: ``causal`` or ``seq2seq`` when the family writes replies; None: intent only.
        token_types: the family reads token type ids (BERT, ELECTRA); the others get none from the tokenizer.
        names: standard size name -> this config's name(s), where they differ or are extra.
        config: settings of models built from scratch, beyond the size.
        decoder_start: the special token an encoder-decoder's decoder starts from (``pad`` or ``eos``).
    """

    tokenizer: str
    reply: str | None = None
    token_types: bool = False
    names: dict[str, tuple[str, ...]] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    decoder_start: str | None = None


_T5_NAMES = dict(hidden_size=("d_model",), num_hidden_layers=("num_layers", "num_decoder_layers"),
                 num_attention_heads=("num_heads",), intermediate_size=("d_ff",), head_dim=("d_kv",))
_ROBERTA = dict(max_position_embeddings=514, type_vocab_size=1)  # positions start after the pad id, as released
_KV_HEADS = dict(num_key_value_heads=("num_key_value_heads",))  # grouped-query attention

#: the covered model types; a new one is a line here when AutoModelFor* knows it, else a plugin (README)
FAMILIES: dict[str, Family] = {
    "bert": Family("wordpiece", token_types=True),
    "roberta": Family("bpe-roberta", config=_ROBERTA),
    "xlm-roberta": Family("unigram-roberta", config=_ROBERTA),
    "deberta-v2": Family("unigram-bert", config=dict(  # DeBERTa-v3's disentangled relative attention
        relative_attention=True, position_biased_input=False, pos_att_type=["p2c", "c2p"], norm_rel_ebd="layer_norm",
        share_att_key=True, position_buckets=256)),
    "modernbert": Family("bpe-bert"),
    "distilbert": Family("wordpiece", names=dict(hidden_size=("dim",), num_hidden_layers=("n_layers",),
                                                 num_attention_heads=("n_heads",), intermediate_size=("hidden_dim",))),
    "electra": Family("wordpiece", token_types=True, names=dict(embedding_size=("embedding_size",))),
    "gpt2": Family("bpe", reply="causal", names=dict(hidden_size=("n_embd",), num_hidden_layers=("n_layer",),
                                                     num_attention_heads=("n_head",), intermediate_size=("n_inner",))),
    "qwen2": Family("bpe", reply="causal", names=_KV_HEADS),
    "llama": Family("bpe", reply="causal", names=_KV_HEADS),
    "t5": Family("unigram", reply="seq2seq", names=_T5_NAMES, decoder_start="pad"),
    "mt5": Family("unigram", reply="seq2seq", names=_T5_NAMES, decoder_start="pad"),
    "bart": Family("bpe-roberta", reply="seq2seq", decoder_start="eos", names=dict(
        hidden_size=("d_model",), num_hidden_layers=("encoder_layers", "decoder_layers"),
        num_attention_heads=("encoder_attention_heads", "decoder_attention_heads"),
        intermediate_size=("encoder_ffn_dim", "decoder_ffn_dim"))),
}


def config_sizes(family: Family) -> dict[str, dict[str, Any]]:
    """:data:`SIZES` in ``family``'s config names, with its own settings."""
    out = {}
    for size, values in SIZES.items():
        values = {**values, "head_dim": values["hidden_size"] // values["num_attention_heads"]}
        names = {**{name: (name,) for name in STANDARD}, **family.names}
        out[size] = {**family.config, **{key: values[name] for name, keys in names.items() for key in keys}}
    return out


class GenericBackbone(Backbone):
    """Any covered Hugging Face architecture (``cs-backbones`` lists them), one model type per instance.

    Args:
        model_type: the Hugging Face ``model_type`` (``roberta``, ``qwen2``...): from the weights' config.json,
            or ``model.model_type`` for models built from scratch.
    """

    name = "generic"
    generic = True
    model_types = tuple(FAMILIES)

    def __init__(self, model_type: str | None = None):
        if model_type is not None and model_type not in FAMILIES:
            raise ConfigError("model.model_type", f"model type '{model_type}' is not covered by the generic family "
                                                  f"(covered: {', '.join(FAMILIES)})",
                              "use a covered type, or add a backbone plugin for it (README, \"Add a backbone plugin\")")
        self.model_type = model_type

    @property
    def family(self) -> Family:
        if self.model_type is None:
            raise ConfigError("model.model_type", "the generic backbone needs a model type",
                              "set model.model_type (for example qwen2), or model.model_name_or_path to weights "
                              "with a config.json")
        return FAMILIES[self.model_type]

    def describe(self) -> str:
        return f"backbone '{self.name}' for model type '{self.model_type}'"

    # Per model type, so properties of the instance rather than class attributes.
    @property
    def supported_tasks(self) -> tuple[str, ...]:
        return ("intent", "reply") if self.model_type is None or self.family.reply else ("intent",)

    @property
    def reply_kind(self) -> str | None:
        return self.family.reply if self.model_type is not None else None

    @property
    def tokenizer_kind(self) -> str:
        return self.family.tokenizer

    @property
    def sizes(self) -> dict[str, dict[str, Any]]:
        return config_sizes(self.family) if self.model_type is not None else SIZES

    # ----------------------------------------------------------------- tokenizer, config
    def prepare_tokenizer(self, tokenizer):
        # decoders without a pad token pad with EOS: the classifier reads the last non-pad token, replies end in
        # EOS only after the reply, and causal prompts are padded on the left by the collator
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if not self.family.token_types and "token_type_ids" in tokenizer.model_input_names:
            tokenizer.model_input_names = [n for n in tokenizer.model_input_names if n != "token_type_ids"]
        return tokenizer

    def new_config(self, size: str, tokenizer, **task_kwargs):
        from transformers import AutoConfig

        config = AutoConfig.for_model(self.model_type, **{**self.sizes[size], **task_kwargs})
        # the released defaults count in another vocabulary: every special token id comes from our tokenizer
        for attr in ("cls_token_id", "sep_token_id"):
            if hasattr(config, attr):
                setattr(config, attr, getattr(tokenizer, attr, None))
        if getattr(config, "forced_eos_token_id", None) is not None:
            config.forced_eos_token_id = tokenizer.eos_token_id
        if self.family.decoder_start:
            config.decoder_start_token_id = getattr(tokenizer, f"{self.family.decoder_start}_token_id")
        return config

    def prepare_config(self, config, tokenizer):
        config = super().prepare_config(config, tokenizer)
        if self.family.decoder_start and getattr(config, "decoder_start_token_id", None) is None:
            config.decoder_start_token_id = getattr(config, f"{self.family.decoder_start}_token_id")
        return config

    def check_source(self, source: ModelSource, key: str = "model.model_name_or_path") -> None:
        found = read_model_type(source)
        if found is not None and self.model_type is not None and found != self.model_type:
            raise ConfigError(key, f"{source.path} holds '{found}' weights, but the backbone was set up for "
                                   f"'{self.model_type}'", "leave model.model_type unset: the weights decide")

    # ----------------------------------------------------------------- freezing
    def layer_groups(self, model) -> list[LayerGroup]:
        """:func:`discover_layer_groups`."""
        return discover_layer_groups(model)


# ------------------------------------------------------------------------------------------------ layer discovery
# discovered once per model (a forward pass), then rebuilt from module paths: freezing asks again every epoch, and
# later asks may come after torch.compile or sharding, when a probing forward pass would be wrong or costly
_DISCOVERED: "weakref.WeakKeyDictionary[nn.Module, list[tuple[str, list[str]]]]" = weakref.WeakKeyDictionary()
_EMBEDDINGS = "embeddings"


def discover_layer_groups(model: nn.Module) -> list[LayerGroup]:
    """The layer groups of any Hugging Face model, found from its structure and one probing forward pass.

    - **Blocks**: the ModuleLists of identical blocks in ``model.base_model`` (the outermost ones; a block holds
      several parametrised layers), each block one group named by its path (``encoder.layer.3``, ``h.0``,
      ``decoder.layers.1``), stacks in the order the forward runs them (encoder blocks before decoder blocks).
    - **Embeddings** (the first group): every other base-model parameter the forward reads before the first block
      (token, position and type embeddings, their norm, ELECTRA's projection, DeBERTa's relative position
      embeddings and their norm), and those a later stack's own module reads before that stack's first block
      (BART's decoder position embeddings and their norm).
    - **Final norms**: a parameter read after a stack's last block, inside that stack's module (T5's
      ``final_layer_norm``, GPT-2's ``ln_f``, Llama's ``norm``), goes with the top block of that stack; one read
      between two blocks goes with the lower block.
    - **Head** (in no group, so it always trains): the parameters of ``model`` outside ``model.base_model`` (the
      classifier, ``score``, DeBERTa's pooler, ModernBERT's prediction head, an untied LM head), and base-model
      parameters read only after the last block, outside that stack's module: BERT's pooler, which feeds the
      classifier only (``backbones/bert.py`` leaves it out too), or an untied LM head where the base model is the
      whole model (T5 generation). A weight tied to the input embeddings counts once, as embeddings; parameters
      the forward never reads are in no group.

    Groups list modules, each whole (an embeddings module with its dropout, a block), every parameter once.
    """
    spec = _DISCOVERED.get(model)
    if spec is None:
        try:
            spec = _DISCOVERED[model] = _discover(model)
        except Exception as err:  # an architecture the probe cannot run: say so in one line, not deep in torch
            raise ConfigError("trainer.callbacks", f"cannot discover the layer groups of {type(model).__name__} "
                                                   f"({type(err).__name__}: {str(err).splitlines()[0][:160]})",
                              "remove the freezing callback, or add a backbone plugin with its own layer_groups "
                              "(README, \"Add a backbone plugin\")") from err
    return [LayerGroup(name, [model.get_submodule(path) for path in paths]) for name, paths in spec]


def _is_block(module: nn.Module) -> bool:
    """A transformer block holds several parametrised layers (attention, feed-forward, norms)."""
    return sum(1 for m in module.modules() if next(m.parameters(recurse=False), None) is not None) > 1


def block_stacks(base: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """The outermost ModuleLists of identical blocks in ``base``, by path (``encoder.layer``, ``h``), in module order
    (:func:`discover_layer_groups` sorts them by the forward; adapters find their default targets in them)."""
    stacks: list[tuple[str, nn.ModuleList]] = []
    for path, module in base.named_modules():
        if not isinstance(module, nn.ModuleList) or not len(module):
            continue
        if any(path.startswith(f"{outer}.") for outer, _ in stacks):
            continue
        if len({type(block) for block in module}) == 1 and all(_is_block(block) for block in module):
            stacks.append((path, module))
    return stacks


class _FirstRead(TorchFunctionMode):
    """Counts torch calls and notes the call at which each watched tensor is first read."""

    def __init__(self, watched: set[int]):
        super().__init__()
        self.watched, self.now, self.first = watched, 0, {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.now += 1
        for value in tree_leaves((args, kwargs)):
            if isinstance(value, torch.Tensor) and id(value) in self.watched:
                self.first.setdefault(id(value), self.now)
        return func(*args, **kwargs)


def _probe_inputs(model: nn.Module) -> dict:
    """A one-row batch every head accepts: ordinary tokens, ending in EOS (T5 and BART classifiers read it)."""
    config = model.config
    special = {getattr(config, f"{t}_token_id", None) for t in ("pad", "bos", "eos", "cls", "sep", "decoder_start")}
    eos = config.eos_token_id[0] if isinstance(config.eos_token_id, (list, tuple)) else config.eos_token_id
    vocab = model.get_input_embeddings().num_embeddings
    ids = [i for i in range(vocab) if i not in special][:4] + ([eos] if eos is not None else [])
    input_ids = torch.tensor([ids], device=next(model.parameters()).device)
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    if getattr(config, "is_encoder_decoder", False):
        inputs["decoder_input_ids"] = input_ids
    return inputs


def _discover(model: nn.Module) -> list[tuple[str, list[str]]]:
    base = model.base_model
    stacks = block_stacks(base)
    if not stacks:
        return []
    params = dict(model.named_parameters())  # tied weights once
    clock = _FirstRead({id(p) for p in params.values()})
    spans: dict[int, list[int]] = {}  # id(block) -> [first call, last return]

    def enter(block, args) -> None:
        spans.setdefault(id(block), [clock.now, clock.now])

    def leave(block, args, output) -> None:
        spans[id(block)][1] = clock.now

    hooks = [hook for _, stack in stacks for block in stack
             for hook in (block.register_forward_pre_hook(enter), block.register_forward_hook(leave))]
    training = {m: m.training for m in model.modules()}
    model.eval()  # no dropout: the probe draws no random numbers
    try:
        with torch.no_grad(), clock:
            type(model).forward(model, **_probe_inputs(model))  # the class's forward: never a compiled one
    finally:
        for handle in hooks:
            handle.remove()
        for module, mode in training.items():
            module.training = mode
    never = float("inf")
    stacks.sort(key=lambda s: spans.get(id(s[1][0]), [never])[0])  # the order the forward runs them

    group_of: dict[int, str] = {}
    names = [f"{path}.{i}" for path, stack in stacks for i in range(len(stack))]
    for path, stack in stacks:
        for i, block in enumerate(stack):
            for p in block.parameters():
                group_of.setdefault(id(p), f"{path}.{i}")
    inside = [{id(p) for p in base.get_submodule(path.rpartition(".")[0]).parameters()} for path, _ in stacks]
    timeline = sorted((span[0], span[1], k, i) for k, (_, stack) in enumerate(stacks)
                      for i, block in enumerate(stack) if (span := spans.get(id(block))))
    for p in base.parameters():
        if id(p) in group_of or id(p) not in clock.first:
            continue
        placed = _place(clock.first[id(p)], id(p), timeline, stacks, inside)
        if placed is not None:
            group_of[id(p)] = placed if placed == _EMBEDDINGS else f"{stacks[placed[0]][0]}.{placed[1]}"

    # each group as whole modules: the outermost ones whose parameters all belong to it (base model first, so a
    # tied LM head never stands in for the embeddings it shares)
    members: dict[str, set[int]] = {}
    for pid, name in group_of.items():
        members.setdefault(name, set()).add(pid)
    base_path = next(path for path, m in model.named_modules() if m is base)
    modules = list(model.named_modules())
    under = [(path, m) for path, m in modules if _under(path, base_path)]
    order = under + [(path, m) for path, m in modules if not _under(path, base_path)]
    chosen: dict[str, list[str]] = {name: [] for name in [_EMBEDDINGS] + names}
    covered: set[int] = set()
    for path, module in order:
        ids = {id(p) for p in module.parameters()}
        if not ids or ids & covered:
            continue
        name = group_of.get(next(iter(ids)))
        if name is not None and ids <= members[name]:
            chosen[name].append(path)
            covered |= ids
    return list(chosen.items())


def _under(path: str, prefix: str) -> bool:
    return not prefix or path == prefix or path.startswith(f"{prefix}.")


def _place(t: int, pid: int, timeline, stacks, inside):
    """Where a base-model parameter outside the blocks, first read at call ``t``, belongs: ``"embeddings"``, a
    ``(stack, block)`` or None (head)."""
    if not timeline or t <= timeline[0][0]:  # a block's span counts the calls after its start: (start, end]
        return _EMBEDDINGS
    start, end, k, i = max((s for s in timeline if s[0] < t), key=lambda s: s[0])
    top = len(stacks[k][1]) - 1
    if t <= end or i < top:  # inside a block, or between two blocks of a stack
        return k, i
    following = k + 1 if k + 1 < len(stacks) else None
    if following is not None and pid in inside[following]:  # a later stack's own embeddings (BART's decoder)
        return _EMBEDDINGS
    if pid in inside[k] or following is not None:  # a final norm, read after the top block
        return k, top
    return None  # after the last stack, outside it: the head's (BERT's pooler)
