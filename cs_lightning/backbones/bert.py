"""BERT-family encoders (BERT, MiniLM and other ``bert`` model types): an intent head on the pooled output."""

from __future__ import annotations

from transformers import BertConfig

from cs_lightning.backbones.base import Backbone, LayerGroup


class BertBackbone(Backbone):
    """BERT encoders: ``bert-base-uncased``, ``sentence-transformers/all-MiniLM-L6-v2``, ``hfl/chinese-roberta-wwm-ext``."""

    name = "bert"
    model_types = ("bert",)
    tokenizer_kind = "wordpiece"
    config_class = BertConfig
    sizes = {
        "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
        "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024),
        "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    }

    def layer_groups(self, model) -> list[LayerGroup]:
        encoder = model.base_model
        groups = [LayerGroup("embeddings", [encoder.embeddings])]
        groups += [LayerGroup(f"layer.{i}", [block]) for i, block in enumerate(encoder.encoder.layer)]
        return groups
