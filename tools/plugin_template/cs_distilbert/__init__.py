"""DistilBERT for cs-lightning: ``--model.backbone distilbert``.

Everything a backbone plugin provides (see ``cs_lightning.backbones.Backbone``): the Hugging Face model types it
accepts, configs for models built from scratch (``tiny`` for tests), the tokenizer to train when none is given, and
the layer groups (embeddings first, then the blocks from input to output, head excluded) that freezing uses.
"""

from transformers import DistilBertConfig

from cs_lightning.backbones import Backbone, LayerGroup


class DistilBertBackbone(Backbone):
    """DistilBERT encoders: ``distilbert-base-uncased``, ``distilbert-base-multilingual-cased``."""

    name = "distilbert"
    supported_tasks = ("intent",)
    model_types = ("distilbert",)
    tokenizer_kind = "wordpiece"
    config_class = DistilBertConfig
    sizes = {
        "tiny": dict(dim=32, n_layers=2, n_heads=2, hidden_dim=64),
        "small": dict(dim=256, n_layers=4, n_heads=4, hidden_dim=1024),
        "base": dict(dim=768, n_layers=6, n_heads=12, hidden_dim=3072),
    }

    def prepare_tokenizer(self, tokenizer):
        tokenizer.model_input_names = ["input_ids", "attention_mask"]  # DistilBERT has no token types
        return tokenizer

    def layer_groups(self, model):
        encoder = model.base_model
        groups = [LayerGroup("embeddings", [encoder.embeddings])]
        groups += [LayerGroup(f"layer.{i}", [block]) for i, block in enumerate(encoder.transformer.layer)]
        return groups
