"""T5-family encoder-decoders: ``T5ForSequenceClassification`` reads the decoder state at the final EOS."""

from __future__ import annotations

from transformers import T5Config

from cs_lightning.backbones.base import Backbone, LayerGroup


class T5Backbone(Backbone):
    """T5 models: ``t5-small``, ``google/flan-t5-base``, ``Langboat/mengzi-t5-base``."""

    name = "t5"
    model_types = ("t5", "mt5")
    supported_tasks = ("intent", "reply")
    reply_kind = "seq2seq"
    tokenizer_kind = "unigram"
    config_class = T5Config
    sizes = {
        "tiny": dict(d_model=32, d_ff=64, d_kv=16, num_layers=2, num_decoder_layers=2, num_heads=2),
        "small": dict(d_model=256, d_ff=1024, d_kv=32, num_layers=4, num_decoder_layers=4, num_heads=8),
        "base": dict(d_model=768, d_ff=3072, d_kv=64, num_layers=12, num_decoder_layers=12, num_heads=12),
    }

    def prepare_config(self, config, tokenizer):
        config = super().prepare_config(config, tokenizer)
        if getattr(config, "decoder_start_token_id", None) is None:
            config.decoder_start_token_id = config.pad_token_id
        return config

    def layer_groups(self, model) -> list[LayerGroup]:
        t5 = model.transformer if hasattr(model, "transformer") else model
        groups = [LayerGroup("shared", [t5.shared])]
        for stack_name in ("encoder", "decoder"):
            stack = getattr(t5, stack_name)
            groups += [LayerGroup(f"{stack_name}.block.{i}", [b]) for i, b in enumerate(stack.block)]
            groups[-1].modules.append(stack.final_layer_norm)
        return groups
