"""GPT-2-family decoders: the intent head reads the last non-pad token."""

from __future__ import annotations

from transformers import GPT2Config

from cs_lightning.backbones.base import Backbone, LayerGroup


class GPTBackbone(Backbone):
    """GPT-2 decoders: ``gpt2``, ``distilgpt2``, ``uer/gpt2-chinese-cluecorpussmall``."""

    name = "gpt"
    model_types = ("gpt2",)
    supported_tasks = ("intent", "reply")
    reply_kind = "causal"
    tokenizer_kind = "bpe"
    config_class = GPT2Config
    sizes = {
        "tiny": dict(n_embd=32, n_layer=2, n_head=2, n_positions=512),
        "small": dict(n_embd=256, n_layer=4, n_head=4, n_positions=1024),
        "base": dict(n_embd=768, n_layer=12, n_head=12, n_positions=1024),
    }

    def prepare_tokenizer(self, tokenizer):
        # GPT-2 ships without a pad token; padding with EOS is safe because the classifier reads the last non-pad
        # token and we never append EOS to an input.
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    def layer_groups(self, model) -> list[LayerGroup]:
        decoder = model.base_model
        groups = [LayerGroup("embeddings", [decoder.wte, decoder.wpe])]
        groups += [LayerGroup(f"h.{i}", [block]) for i, block in enumerate(decoder.h)]
        groups[-1].modules.append(decoder.ln_f)  # final norm belongs to the top block
        return groups
