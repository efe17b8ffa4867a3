"""Steps per second and peak memory of ``configs/qwen_reply_lora.yaml`` at the real Qwen2.5-0.5B size, offline.

The weights are random (nothing is downloaded): a folder is written with Qwen2.5-0.5B-Instruct's architecture (24
layers, hidden 896, 14 query / 2 key-value heads, MLP 4,864, a 151,936-row tied embedding: 494M parameters) and a
ChatML tokenizer trained on the bundled e-commerce dialogues (its ids all fall inside the embedding), then ``cs-train
fit`` runs the config as written (LoRA r=16 on the attention and MLP projections, bf16-mixed, batch 8 whole
conversations) with ``--model.model_name_or_path`` pointing at that folder, for ``--steps`` optimizer steps without
validation. Reported: steps/s and tokens/s over the steps after ``--warmup`` (CUDA synchronized at both ends), peak
GPU memory (``max_memory_allocated``) and the trainable parameter count. Random weights make the speed and memory those of the real model; the loss means nothing.

    python tools/chat_lora_gpu.py                 # on a GPU; one JSON line (tools/gpu_check.py runs it)
    python tools/chat_lora_gpu.py --tiny --precision 32-true --steps 3 --warmup 1   # the same path on a CPU, tiny
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QWEN25_05B = dict(vocab_size=151936, hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, intermediate_size=4864, max_position_embeddings=32768,
                  tie_word_embeddings=True, rope_theta=1000000.0, rms_norm_eps=1e-6)
TINY = dict(vocab_size=4096, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, max_position_embeddings=2048, tie_word_embeddings=True)


def dialogue_texts() -> list[str]:
    """Every turn of the bundled English e-commerce dialogues and the shop's system prompt."""
    demo = REPO / "cs_lightning" / "data" / "demo" / "ecommerce"
    texts = [(demo / "system_prompt.en.txt").read_text(encoding="utf-8")]
    for path in sorted((demo / "dialogues" / "en").glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                texts += [turn["text"] for turn in record["turns"]]
    return texts


def write_model(folder: Path, dims: dict) -> int:
    """A random Qwen2 causal LM of ``dims`` with a ChatML tokenizer, saved in bf16 as the hub's is; its size."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from cs_lightning.tokenization import train_tokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(train_tokenizer(dialogue_texts(), "bpe-chatml", 2000,
                                                                  lowercase=False)))
    if len(tokenizer) > dims["vocab_size"]:
        raise SystemExit(f"the tokenizer has {len(tokenizer)} tokens, more than the model's {dims['vocab_size']}")
    config = Qwen2Config(**dims, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=None, dtype=torch.bfloat16)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    params = sum(p.numel() for p in model.parameters())
    model.to(torch.bfloat16).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return params


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps in all (default 30)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    parser.add_argument("--precision", default=None, help="default: the config's (bf16-mixed)")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer Qwen2 instead of the 0.5B size (CPU check)")
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.steps <= args.warmup:
        parser.error("need 1 <= --warmup < --steps")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from lightning.pytorch.callbacks import Callback

    from cs_lightning.commands.train import CSLightningCLI

    cuda = torch.cuda.is_available()
    marks: dict = {"tokens": 0, "steps": 0}

    def sync():
        if cuda:
            torch.cuda.synchronize()

    class StepClock(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if marks["steps"] >= args.warmup:
                marks["tokens"] += int(batch["attention_mask"].sum())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            marks["steps"] += 1
            if marks["steps"] in (args.warmup, args.steps):
                sync()
                marks[marks["steps"]] = time.perf_counter()

    class ClockCLI(CSLightningCLI):
        def instantiate_trainer(self, **kwargs):
            trainer = super().instantiate_trainer(**kwargs)
            trainer.callbacks.append(StepClock())
            return trainer

    with tempfile.TemporaryDirectory(prefix="chat_lora_gpu_") as work:
        folder = Path(work) / "qwen2.5-0.5b-random"
        began = time.time()
        params = write_model(folder, TINY if args.tiny else QWEN25_05B)
        built_s = time.time() - began
        cli_args = ["fit", "--config", str(REPO / "configs" / "qwen_reply_lora.yaml"),
                    "--model.model_name_or_path", str(folder), "--trainer.max_steps", str(args.steps),
                    "--trainer.max_epochs", "1000", "--trainer.limit_val_batches", "0",
                    "--trainer.num_sanity_val_steps", "0", "--trainer.enable_progress_bar", "false",
                    "--trainer.logger.init_args.save_dir", str(Path(work) / "logs")]
        if args.precision:
            cli_args += ["--trainer.precision", args.precision]
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        argv_saved, sys.argv = sys.argv, ["cs-train"]
        try:
            cli = ClockCLI(args=cli_args)
        finally:
            sys.argv = argv_saved
        if marks["steps"] < args.steps:
            raise SystemExit(f"chat_lora_gpu: only {marks['steps']} of {args.steps} steps ran (too few batches?)")
        seconds = marks[args.steps] - marks[args.warmup]
        timed = args.steps - args.warmup
        module = cli.model
        result = {
            "model": "Qwen2 tiny" if args.tiny else "Qwen2.5-0.5B size (random weights)", "params": params,
            "trainable_params": sum(p.numel() for p in module.parameters() if p.requires_grad),
            "precision": cli.trainer.precision, "batch_size": cli.datamodule.hparams.batch_size,
            "steps_per_s": timed / seconds, "tokens_per_s": marks["tokens"] / seconds, "timed_steps": timed,
            "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2 ** 20 if cuda else None,
            "device": torch.cuda.get_device_name() if cuda else "cpu", "build_model_s": built_s,
        }
    line = json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()})
    print(line, flush=True)
    return result


if __name__ == "__main__":
    main()
