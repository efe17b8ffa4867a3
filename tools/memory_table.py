"""Memory for weights, gradients and AdamW state of the models support teams start from, full fine-tuning and LoRA,
in the usual precisions: the estimate ``cs-train fit`` prints at its start, for each model's published dimensions.

Nothing is downloaded: each model is built from its config (the published sizes, written below) on the meta device,
as an intent classifier with 77 classes (Banking77), and LoRA r=16 goes on the attention and MLP projections (the
default targets). With ``--task reply`` the decoders (Qwen2.5) are built as causal language models instead, as a reply
model fine-tunes them (``configs/qwen_reply_lora.yaml``; no head beyond the tied embeddings, no new tokens in the chat
format). Activations come on top and grow with batch size and length. Prints a Markdown table and, with ``--json``, one
JSON line per row.

    python tools/memory_table.py [--task intent|reply] [--json]
"""

from __future__ import annotations

import argparse
import json

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

from cs_lightning.models.adapters import adapter_settings, apply_adapters, head_modules
from cs_lightning.models.memory import estimate_memory, format_bytes

# published dimensions (config.json of each hub model)
MODELS = {
    "all-MiniLM-L6-v2 (bundled)": dict(model_type="bert", vocab_size=30522, hidden_size=384, num_hidden_layers=6,
                                       num_attention_heads=12, intermediate_size=1536),
    "bert-base-uncased": dict(model_type="bert", vocab_size=30522, hidden_size=768, num_hidden_layers=12,
                              num_attention_heads=12, intermediate_size=3072),
    "roberta-base": dict(model_type="roberta", vocab_size=50265, hidden_size=768, num_hidden_layers=12,
                         num_attention_heads=12, intermediate_size=3072, max_position_embeddings=514),
    "xlm-roberta-base": dict(model_type="xlm-roberta", vocab_size=250002, hidden_size=768, num_hidden_layers=12,
                             num_attention_heads=12, intermediate_size=3072, max_position_embeddings=514),
    "deberta-v3-base": dict(model_type="deberta-v2", vocab_size=128100, hidden_size=768, num_hidden_layers=12,
                            num_attention_heads=12, intermediate_size=3072, relative_attention=True,
                            position_buckets=256, norm_rel_ebd="layer_norm", share_att_key=True,
                            pos_att_type=["p2c", "c2p"], max_relative_positions=-1, position_biased_input=False),
    "ModernBERT-base": dict(model_type="modernbert", vocab_size=50368, hidden_size=768, num_hidden_layers=22,
                            num_attention_heads=12, intermediate_size=1152),
    "Qwen2.5-0.5B-Instruct": dict(model_type="qwen2", vocab_size=151936, hidden_size=896, num_hidden_layers=24,
                                  num_attention_heads=14, num_key_value_heads=2, intermediate_size=4864,
                                  tie_word_embeddings=True, pad_token_id=151643),
    "Qwen2.5-1.5B-Instruct": dict(model_type="qwen2", vocab_size=151936, hidden_size=1536, num_hidden_layers=28,
                                  num_attention_heads=12, num_key_value_heads=2, intermediate_size=8960,
                                  tie_word_embeddings=True, pad_token_id=151643),
}
RUNS = [("full", None, "32-true"), ("full", None, "bf16-mixed"), ("full", None, "bf16-true"),
        ("LoRA r=16", {"method": "lora", "r": 16, "alpha": 32}, "32-true"),
        ("LoRA r=16", {"method": "lora", "r": 16, "alpha": 32}, "bf16-true")]


#: the models a reply task fine-tunes as causal language models
DECODERS = ("qwen2",)


def build(dims: dict, peft: dict | None, task: str = "intent") -> torch.nn.Module:
    dims = dict(dims)
    if task == "reply":
        config = AutoConfig.for_model(dims.pop("model_type"), **dims)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        if peft is not None:
            model, _ = apply_adapters(model, adapter_settings(peft), "causal", [], [])
        return model
    config = AutoConfig.for_model(dims.pop("model_type"), num_labels=77, **dims)
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
    if peft is not None:
        model, _ = apply_adapters(model, adapter_settings(peft), "intent", head_modules(model), [])
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--task", choices=("intent", "reply"), default="intent")
    args = parser.parse_args()
    models = {name: dims for name, dims in MODELS.items()
              if args.task == "intent" or dims["model_type"] in DECODERS}
    rows = []
    for name, dims in models.items():
        for run, peft, precision in RUNS:
            est = estimate_memory(build(dims, peft, args.task), precision)
            rows.append(dict(model=name, run=run, precision=precision, trainable=est.trainable, total=est.total,
                             bytes=est.bytes))
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return
    print("| model | parameters | " + " | ".join(f"{r} {p}" for r, _, p in RUNS) + " |")
    print("|---|---|" + "---|" * len(RUNS))
    for name in models:
        mine = [r for r in rows if r["model"] == name]
        lora = next(r for r in mine if r["run"] != "full")
        print(f"| {name} | {mine[0]['total'] / 1e6:,.0f}M (LoRA trains {lora['trainable'] / 1e6:.1f}M) | " +
              " | ".join(format_bytes(r["bytes"]) for r in mine) + " |")


if __name__ == "__main__":
    main()
