"""Whole-epoch training time of cs-lightning against a plain PyTorch loop and the Hugging Face Trainer.

The headline is the wall time of one whole epoch of Banking77's training split (every example once), the same model,
optimizer, precision and threads, four ways, each in a fresh subprocess (``python tools/benchmark.py --runner NAME``
re-invokes this file and prints one JSON line), each with its own natural batching:

``plain``
    A hand-written loop over cs-lightning's own pieces: the ``IntentDataModule``/``DialogueDataModule`` built from the
    config (cached tokens, ``LengthGroupedBatchSampler``, ``PadCollator``), the ``IntentClassifier``/``ReplyGenerator``
    module's forward and loss, and the optimizer and schedule its ``configure_optimizers()`` returns (fused AdamW,
    decay and no-decay groups, linear warm-up then decay). No Lightning Trainer: forward, backward,
    ``optimizer.step()``, ``scheduler.step()``, ``zero_grad(set_to_none=True)``. So ``cs_vs_plain`` is the cost of the
    framework (Trainer, callbacks, logging) and what ``cs-train`` sets up for the process, nothing else.
``cs``
    cs-lightning as users run it: ``cs-train fit --config configs/<case>.yaml`` (``CSLightningCLI`` with its default
    callbacks: progress bar, TensorBoard logger, ``BestAndLastCheckpoint``, ``LearningRateMonitor``, artifacts...),
    with overrides for one epoch, no validation and a temporary log folder. A small callback is appended to time the
    epoch; nothing else changes.
``hf`` / ``hf_grouped``
    ``transformers.Trainer`` on the same token ids (the data module's tokenized training set, as a list of dicts),
    ``DataCollatorWithPadding``, ``AutoModelForSequenceClassification`` from the same weights (or the same random-init
    config), the same learning rate, weight decay, warm-up share and label smoothing, the Trainer's default optimizer
    (torch AdamW, fused, as cs-lightning's), no gradient clipping (cs-lightning does not clip by default),
    ``report_to="none"``, no saving, no evaluation, default data-loader settings. ``hf`` samples random batches (the
    Trainer's default); ``hf_grouped`` sets ``train_sampling_strategy="group_by_length"`` (the transformers 5 name of
    the old ``group_by_length=True``: mega-batches of 50 batches sorted by length, longest first). Banking77 only.

Cases: ``banking77`` (``configs/bert_intent_banking77.yaml`` on ``<data-dir>/banking77/train.csv``: intent
classification, short messages; 10,003 examples, 313 steps of 32) and ``sgd`` (``configs/gpt_reply_sgd.yaml`` on
``<data-dir>/sgd_subset/train``: multi-turn reply generation, GPT from scratch; runners plain and cs only; ``--set
data.prompt_format=chat`` measures the whole-conversation chat format). Validation is off everywhere
(``val_fraction 0``, no val/test file), so only training is timed.

``--same-batches`` feeds every runner the identical batch sequence instead (cs-lightning's length-grouped first
epoch, its one short batch moved last), so the per-step cost of each framework is compared on identical tensors;
``hf`` and ``hf_grouped`` are then one runner. ``--profile`` adds where the epoch's time goes: collation, forward,
backward (loss included), optimizer step, and the rest (hooks, logging, progress bar, scheduler, ``zero_grad``,
fetching samples), from hooks on the model and the optimizer.

Runs alternate and repeat: repeat 1 runs plain, cs, hf, hf_grouped, repeat 2 the reverse, and so on; each figure is
the median over the repeats (min-max beside it), so a noisy neighbour on the machine moves all runners alike.

How to run::

    python tools/benchmark.py --quick           # a fixed 800-example subset, one thread, 2 repeats: ~3 minutes
    python tools/benchmark.py --cases banking77 # the headline: whole Banking77 epochs (about 20 minutes on 2 cores)
    python tools/benchmark.py                   # plus the SGD reply case
    python tools/benchmark.py --same-batches --profile --cases banking77   # per-step cost on identical batches
    python tools/benchmark.py --device cuda --precision bf16-mixed --model-size bert-base --out bench.json
    python tools/benchmark.py --runner cs --case banking77 --quick   # one runner once, one JSON line

Options: ``--device cpu|cuda``, ``--precision 32-true|bf16-mixed|16-mixed`` (16-mixed needs CUDA),
``--model-size minilm`` (all-MiniLM-L6-v2 offline weights, as the configs use) or ``bert-base`` (a random-init
BERT-base: 12 layers, hidden 768, on MiniLM's uncased 30,522-token vocabulary, so the token ids stay the same; for the
SGD case: GPT-2 base size), ``--batch-size`` (32), ``--repeats`` (3), ``--train-limit`` (a seeded sample of
Banking77), ``--runners``, ``--cases``, ``--threads`` (the same ``torch.set_num_threads`` in every runner; default
torch's, but 1 for ``--quick`` on CPU, since two threads on a busy 2-core machine stall each other), ``--set
data.KEY=VALUE`` (plain and cs runners: measure one option), ``--out FILE`` (also write the JSON).

What each number means (every runner measures the same way):

- ``epoch_s``: from just before the runner asks its data loader for the epoch's first batch (cs: the
  ``on_train_epoch_start`` hook; HF: ``on_epoch_begin``) to the end of the epoch's last optimizer step (on CUDA with
  a synchronize at both ends): every cost in between (data loading, collation, hooks, logging, progress bar)
  included; start-up (imports, model load, trainer set-up) is ``startup_s``, from the moment the parent started the
  subprocess (the parent builds each case's data module first, so tokenizers and token caches are warm); what
  follows the last step (a checkpoint at the end of training, teardown) is in no figure: the process ends there;
- ``samples_per_s`` and ``tokens_per_s`` (real, non-pad tokens): over the whole epoch; ``pad_fraction``: the share
  of computed positions that are padding; every run checks it trained on every example of the split once;
- ``window_samples_per_s`` / ``window_tokens_per_s``: the old figures, steps W+1..W+N of the epoch (5+20; the
  window holds different batches for different samplers, so it does not compare runners: the epoch does);
- ``peak_rss_mb``: the process's peak resident memory (``ru_maxrss``); ``peak_gpu_mb``: ``max_memory_allocated``;
- ``cpu_util``: CPU seconds the process used in the epoch / (seconds x threads); on a CPU run, well under 1
  means the runner was starved by other load on the machine, so its figures are not to be trusted;
- ``mfu`` (CUDA only): model-FLOPs utilisation over the epoch, ``6 * N * T / t / P``, where T is the padded tokens
  computed (batch x padded length, summed), t the epoch's seconds, P the device's dense bf16 peak (H100/H200:
  989e12 FLOP/s, A100: 312e12; ``--peak-flops`` for other cards) and N the parameters of the matrix-multiply layers
  (weights and biases of ``nn.Linear`` and GPT-2's ``Conv1D``, a tied LM head counted once; embedding tables and
  norms left out, as they cost no matmul), reported as ``params_matmul`` beside ``params``: 2N FLOPs per token
  forward, 4N backward. Attention-score FLOPs are left out too, so MFU slightly underestimates long sequences. In
  32-true it is still relative to the bf16 peak. Fixed-length MFU: ``--set data.pad_to_buckets=[128] --runners cs``.
- ratios: ``cs_vs_plain`` = median epoch time of plain / median epoch time of cs (Banking77); above 1 means
  cs-lightning finishes the epoch first. ``cs_vs_hf`` and ``cs_vs_hf_grouped`` likewise; ``window_ratios`` holds the
  old windowed samples/s ratios for comparison.

``--quick`` runs whole epochs of a fixed, seeded 800-example subset (25 steps), one thread, 2 repeats: a check that
everything runs and a rough ratio, not absolute numbers. On so small a set the HF Trainer's grouped sampler shrinks
its mega-batches (it caps them at a quarter of the data: 6 batches), so ``hf_grouped`` pads 33.6% there against 6.6%
on the whole split, and ``cs_vs_hf_grouped`` reads about 1.3 where the whole epoch says 1.09.

The last line printed is one JSON object; a readable table comes before it.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import inspect
import json
import math
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNNERS = ("plain", "cs", "hf", "hf_grouped")
CASES = {
    # case: (config, training data under --data-dir, runners that support it)
    "banking77": ("configs/bert_intent_banking77.yaml", "banking77/train.csv", RUNNERS),
    "sgd": ("configs/gpt_reply_sgd.yaml", "sgd_subset/train", ("plain", "cs")),
}
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
QUICK = {"train_limit": 800, "warmup": 2, "steps": 10, "cases": "banking77", "repeats": 2}
FULL = {"warmup": 5, "steps": 20, "cases": "banking77,sgd"}
H100_BF16_DENSE = 989e12  # FLOP/s, dense bf16, H100 SXM and H200


def peak_flops(device_name: str) -> float | None:
    """Dense bf16 peak of the card, from its name (None when unknown: pass --peak-flops)."""
    name = device_name.upper()
    if "H100" in name or "H200" in name:
        return H100_BF16_DENSE
    if "A100" in name:
        return 312e12
    return None


# ---------------------------------------------------------------------------------------------------- arguments
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help=f"one epoch of a fixed {QUICK['train_limit']}-example subset of Banking77 per run, one "
                             "thread, 2 repeats, no SGD case (about 3 minutes on 2 CPU cores)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    parser.add_argument("--precision", choices=PRECISIONS, default="32-true")
    parser.add_argument("--model-size", choices=("minilm", "bert-base"), default="minilm")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=None,
                        help="runs of each runner; figures are medians (default 3; --quick: 2)")
    parser.add_argument("--steps", type=int, default=None,
                        help="the secondary window: steps W+1..W+N of the epoch (N default: 10 quick, 20 full)")
    parser.add_argument("--warmup", type=int, default=None, help="the window starts after step W (2 quick, 5 full)")
    parser.add_argument("--profile", action="store_true",
                        help="also time the phases of every step (collate, forward, backward, optimizer, the rest): "
                             "where the epoch goes; the hooks cost a little, so keep headline runs without it")
    parser.add_argument("--same-batches", action="store_true",
                        help="feed every runner cs-lightning's batch sequence of the first epoch (identical tensors: "
                             "compares per-step framework cost; hf and hf_grouped are then one runner)")
    parser.add_argument("--runners", default=",".join(RUNNERS), help="comma-separated subset of " + ",".join(RUNNERS))
    parser.add_argument("--cases", default=None,
                        help="comma-separated: banking77,sgd (default: both; --quick: banking77)")
    parser.add_argument("--train-limit", type=int, default=None,
                        help=f"use this many training examples of Banking77 (a seeded sample; --quick: "
                             f"{QUICK['train_limit']})")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads in every runner (default: torch's; --quick on CPU: 1)")
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--peak-flops", type=float, default=None, help="device peak FLOP/s for MFU (default: by name)")
    parser.add_argument("--child-timeout", type=float, default=600, help="seconds one runner may take")
    parser.add_argument("--out", default=None, help="also write the final JSON here")
    parser.add_argument("--set", action="append", default=[], metavar="data.KEY=VALUE",
                        help="change a data or model setting for the plain and cs runners (YAML value), to measure "
                             "one speed option: --set data.group_by_length=false, --set model.compile=true "
                             "--set 'data.pad_to_buckets=[16,32,64]'; repeatable")
    # one runner in this process (what the parent invokes)
    parser.add_argument("--runner", choices=RUNNERS, default=None, help="run one runner once and print its JSON line")
    parser.add_argument("--case", choices=tuple(CASES), default="banking77", help="the case of --runner")
    parser.add_argument("--train-file", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--tokens-file", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--batches-file", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--epoch-steps", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result-file", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--t0", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--work-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else FULL
    if args.quick and args.train_limit is None:
        args.train_limit = QUICK["train_limit"]
    args.repeats = (QUICK["repeats"] if args.quick else 3) if args.repeats is None else args.repeats
    args.warmup = preset["warmup"] if args.warmup is None else args.warmup
    args.steps = preset["steps"] if args.steps is None else args.steps
    args.cases = [c for c in (args.cases or preset["cases"]).split(",") if c]
    args.runners = [r for r in args.runners.split(",") if r]
    for name in args.cases:
        if name not in CASES:
            parser.error(f"unknown case {name!r}; choose from {', '.join(CASES)}")
    for name in args.runners:
        if name not in RUNNERS:
            parser.error(f"unknown runner {name!r}; choose from {', '.join(RUNNERS)}")
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1 (the clock starts at the end of step W)")
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.precision == "16-mixed" and args.device != "cuda":
        parser.error("--precision 16-mixed needs --device cuda (use bf16-mixed on CPU)")
    if args.threads is None:
        import torch

        # --quick on CPU: one thread. Two threads on a 2-core machine where anything else is running spend most of
        # their time waiting for each other at every op (a busy neighbour made steps 28x slower); one is robust.
        args.threads = 1 if args.quick and args.device == "cpu" else torch.get_num_threads()
    return args


# ---------------------------------------------------------------------------------------------------- the cases
def train_file(args, case: str, work_dir: Path) -> str:
    """The training data of ``case``: the shared file, or a seeded sample of ``--train-limit`` Banking77 rows written
    to ``work_dir`` (a temporary folder outside the repository)."""
    path = Path(args.data_dir) / CASES[case][1]
    if not path.exists():
        raise SystemExit(f"benchmark: {path} not found (the shared data folder sits beside the checkout; "
                         "give --data-dir)")
    if case != "banking77" or not args.train_limit:
        return str(path)
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    if args.train_limit >= len(body):
        return str(path)
    chosen = sorted(random.Random(0).sample(range(len(body)), args.train_limit))
    subset = work_dir / f"banking77_train_{args.train_limit}.csv"
    if not subset.exists():
        with open(subset, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(body[i] for i in chosen)
    return str(subset)


def case_spec(args, case: str, train_path: str) -> dict:
    """Config file plus the overrides every runner applies (CLI flags for cs, keyword arguments for the others)."""
    data = {"train_file": train_path, "val_file": None, "test_file": None, "val_fraction": 0.0,
            "batch_size": args.batch_size}
    model: dict = {}
    if args.model_size == "bert-base":
        if case == "banking77":  # BERT-base shape on MiniLM's (= bert-base-uncased's) vocabulary, random init
            from cs_lightning.backbones.bert import BertBackbone

            model = {"pretrained": False, "config_overrides": dict(BertBackbone.sizes["base"])}
        else:
            model = {"model_size": "base"}
    import yaml

    for item in args.set:
        key, _, value = item.partition("=")
        group, _, name = key.partition(".")
        if group not in ("data", "model") or not name or not _:
            raise SystemExit(f"--set {item!r}: expected data.KEY=VALUE or model.KEY=VALUE")
        (data if group == "data" else model)[name] = yaml.safe_load(value)
    return {"case": case, "config": str(REPO / CASES[case][0]), "data": data, "model": model}


def resolved_config(spec: dict) -> dict:
    """The config's model and data settings with the overrides applied and the CLI's links resolved (model ->
    data: backbone, tokenizer), as ``cs-train`` would instantiate them."""
    import yaml

    cfg = yaml.safe_load(Path(spec["config"]).read_text(encoding="utf-8"))
    model_kw = {**(cfg["model"].get("init_args") or {}), **spec["model"]}
    data_kw = {**(cfg["data"].get("init_args") or {}), **spec["data"]}
    data_kw["backbone"] = model_kw.get("backbone", "bert")
    data_kw["tokenizer"] = model_kw.get("model_name_or_path")
    if model_kw.get("trust_remote_code"):  # linked the same way by newer cs-train versions
        data_kw["trust_remote_code"] = True
    return {"seed": cfg.get("seed_everything", 42), "model_class": cfg["model"]["class_path"],
            "data_class": cfg["data"]["class_path"], "model": model_kw, "data": data_kw}


def _import(class_path: str):
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def build_datamodule(conf: dict):
    return _import(conf["data_class"])(**conf["data"])


def build_module(conf: dict, dm):
    """The LightningModule with the values the CLI links from the data module (labels, counts, tokenizer...)."""
    cls = _import(conf["model_class"])
    accepted = inspect.signature(cls.__init__).parameters
    links = {"labels": getattr(dm, "label_names", None), "label_counts": getattr(dm, "label_counts", None),
             "tokenizer_path": dm.tokenizer_path, "rules_path": getattr(dm, "rules_path", None),
             "language": dm.hparams.language, "oos_label": dm.hparams.get("oos_label")}
    kwargs = {**conf["model"], **{k: v for k, v in links.items() if k in accepted}}
    return cls(**kwargs)


def cs_cli_args(spec: dict, args, log_dir: str) -> list[str]:
    """``cs-train fit`` arguments for the cs runner: one epoch, no validation, logs in a temporary folder."""
    out = ["fit", "--config", spec["config"]]
    for key, value in spec["data"].items():
        out += [f"--data.init_args.{key}", "null" if value is None else json.dumps(value)
                if isinstance(value, (dict, list, bool)) else str(value)]
    for key, value in spec["model"].items():
        out += [f"--model.init_args.{key}", json.dumps(value) if isinstance(value, (dict, list, bool)) else str(value)]
    out += ["--trainer.max_epochs", "1", "--trainer.max_steps", "-1", "--trainer.accelerator", "gpu" if args.device == "cuda" else "cpu",
            "--trainer.devices", "1", "--trainer.precision", args.precision, "--trainer.limit_val_batches", "0",
            "--trainer.num_sanity_val_steps", "0", "--trainer.logger.init_args.save_dir", log_dir]
    return out


# ---------------------------------------------------------------------------------------------------- measuring
class EpochRecorder:
    """The clock of one training epoch: its start, the end of every optimizer step, the batches it trained on.

    The runner calls ``epoch_start()`` just before it asks its data loader for the epoch's first batch, and
    ``step_end()`` at the end of every optimizer step (after ``scheduler.step()``); the collator wrapper calls
    ``batch_done(batch)`` for every batch it builds, in order (step k trains on the k-th batch: one batch per step, no
    accumulation). At the end of the epoch's last step the result is handed to ``emit`` and the process ends, so what
    a runner does after training (checkpoint writing, teardown) is in no figure. On CUDA the clock synchronizes at the
    epoch start, at the window's two ends and at the epoch end.
    """

    def __init__(self, t0: float, epoch_steps: int, warmup: int, steps: int, cuda: bool):
        self.t0, self.epoch_steps, self.warmup, self.steps, self.cuda = t0, epoch_steps, warmup, steps, cuda
        self.batches: list[tuple[int, int, int]] = []  # (samples, non-pad tokens, padded tokens)
        self.times: list[float] = []  # perf_counter at the end of each step
        self.count = 0
        self.start = self.end = self.cpu_start = self.cpu_end = None
        self.startup_s = self.first_step_s = None
        self.report = None  # set by the runner: () -> result dict
        self.emit = None  # set by run_one: result dict -> never returns
        self.clock: PhaseClock | None = None  # set with --profile

    def batch_done(self, batch: dict) -> None:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        self.batches.append((int(ids.shape[0]), int(mask.sum()), int(ids.numel())))

    def _sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def epoch_start(self) -> None:
        if self.start is None:
            self._sync()
            self.startup_s = time.time() - self.t0
            self.start, self.cpu_start = time.perf_counter(), time.process_time()

    def step_end(self) -> None:
        self.count += 1
        k = self.count
        if k in (1, self.warmup, self.warmup + self.steps, self.epoch_steps):
            self._sync()
        now = time.perf_counter()
        self.times.append(now)
        if k == 1:
            self.first_step_s = time.time() - self.t0
        if k == self.epoch_steps:
            self.end, self.cpu_end = now, time.process_time()
            if self.emit is not None and self.report is not None:
                self.emit(self.report())

    @property
    def done(self) -> bool:
        return self.count >= self.epoch_steps

    def result(self) -> dict:
        if self.end is None or self.start is None:
            raise RuntimeError(f"the epoch did not finish: {self.count} of {self.epoch_steps} steps ran")
        import torch

        def totals(rows):
            return tuple(sum(b[i] for b in rows) for i in range(3))

        seconds = self.end - self.start
        samples, real, padded = totals(self.batches[:self.epoch_steps])
        out = {"epoch_s": seconds, "epoch_steps": self.epoch_steps, "samples": samples, "real_tokens": real,
               "padded_tokens": padded, "samples_per_s": samples / seconds, "tokens_per_s": real / seconds,
               "step_ms": 1000 * seconds / self.epoch_steps, "pad_fraction": 1 - real / padded,
               "mean_padded_length": padded / samples,
               # CPU seconds of this process per wall second per thread: well under 1 on a CPU run means it was
               # starved (other load on the machine) rather than slow
               "cpu_util": (self.cpu_end - self.cpu_start) / seconds / torch.get_num_threads(),
               "startup_s": self.startup_s, "first_step_s": self.first_step_s,
               "window_samples_per_s": None, "window_tokens_per_s": None}
        w, n = self.warmup, self.steps
        if self.epoch_steps >= w + n:  # the old windowed figures: steps W+1..W+N of this epoch
            win = self.end_of(w + n) - self.end_of(w)
            ws, wr, _ = totals(self.batches[w:w + n])
            out.update(window_samples_per_s=ws / win, window_tokens_per_s=wr / win)
        if self.clock is not None:
            out["phases_s"] = self.clock.result(seconds)
        return out

    def end_of(self, step: int) -> float:
        return self.times[step - 1]


class PhaseClock:
    """Where the epoch's time goes (``--profile``): collation, the model's forward, from its end to the optimizer step
    (loss and backward), the optimizer step, and the rest of the epoch's wall time (the framework: hooks, logging,
    progress bar, scheduler, ``zero_grad``, fetching samples, host-device copies). Marks are taken from hooks on the
    model and on every optimizer's ``step`` (on CUDA after a synchronize), summed between the epoch's start and end.
    """

    PHASES = ("collate", "forward", "backward", "optimizer")

    def __init__(self, rec: EpochRecorder):
        self.rec = rec
        self.totals = dict.fromkeys(self.PHASES, 0.0)
        self.marks: dict[str, float] = {}

    def _on(self) -> bool:
        return self.rec.start is not None and self.rec.end is None

    def now(self) -> float:
        self.rec._sync()
        return time.perf_counter()

    def add(self, phase: str, since: float) -> None:
        if self._on():
            self.totals[phase] += self.now() - since

    def attach(self, model) -> None:
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

        model.register_forward_pre_hook(lambda *_: self.marks.__setitem__("forward", self.now()))
        model.register_forward_hook(lambda *_: self.marks.__setitem__("forward_end", self.now()))
        for param in model.parameters():  # the backward ends when the last gradient is in (no sync: CPU clock)
            if param.requires_grad:
                param.register_post_accumulate_grad_hook(lambda _: self.marks.__setitem__("grads",
                                                                                          time.perf_counter()))
        # Lightning calls step(closure), running forward and backward inside the step: the optimizer's own time
        # starts at whichever is later, the step's call or the last gradient
        register_optimizer_step_pre_hook(lambda *_: self.marks.__setitem__("step", self.now()))
        register_optimizer_step_post_hook(lambda *_: self._step_end())

    def _step_end(self) -> None:
        end, m = self.now(), self.marks
        if self._on() and {"forward", "forward_end", "grads", "step"} <= m.keys():
            self.totals["forward"] += m["forward_end"] - m["forward"]
            self.totals["backward"] += m["grads"] - m["forward_end"]
            self.totals["optimizer"] += end - max(m["step"], m["grads"])
        m.clear()

    def result(self, epoch_s: float) -> dict:
        out = {k: round(v, 3) for k, v in self.totals.items()}
        out["rest"] = round(epoch_s - sum(self.totals.values()), 3)
        return out


class RecordingCollator:
    """Wraps a collator and reports every batch to the recorder (and its time to the phase clock)."""

    def __init__(self, inner, recorder: EpochRecorder):
        self.inner, self.recorder = inner, recorder

    def __call__(self, samples):
        clock = self.recorder.clock
        begin = clock.now() if clock else None
        batch = self.inner(samples)
        if clock:
            clock.add("collate", begin)
        self.recorder.batch_done(batch)
        return batch


def matmul_params(model) -> int:
    """Parameters of the matrix-multiply layers (Linear, GPT-2's Conv1D), shared weights counted once."""
    import torch

    seen, total = set(), 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D":
            for p in module.parameters(recurse=False):
                if id(p) not in seen:
                    seen.add(id(p))
                    total += p.numel()
    return total


def finish(rec: EpochRecorder, args, runner: str, case: str, model, extra: dict | None = None) -> dict:
    import torch

    out = {"runner": runner, "case": case, **rec.result()}
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["params"] = sum(p.numel() for p in model.parameters())
    out["params_matmul"] = matmul_params(model)
    out["threads"] = torch.get_num_threads()
    out["peak_gpu_mb"] = out["mfu"] = None
    if args.device == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
        peak = args.peak_flops or peak_flops(torch.cuda.get_device_name())
        if peak:
            out["mfu"] = 6 * out["params_matmul"] * out["padded_tokens"] / out["epoch_s"] / peak
    out.update(extra or {})
    return out


def autocast(args):
    import torch

    if args.precision == "32-true":
        return nullcontext()
    dtype = torch.bfloat16 if args.precision == "bf16-mixed" else torch.float16
    return torch.autocast(device_type=args.device, dtype=dtype)


# ---------------------------------------------------------------------------------------------------- runners
def _impl(optimizer) -> str:
    """Which AdamW implementation an optimizer uses."""
    defaults = optimizer.defaults
    return "fused" if defaults.get("fused") else "foreach" if defaults.get("foreach") else "for-loop"


class _OptimizerTrainerShim:
    """What ``BackboneModule.configure_optimizers`` reads from a Trainer: the step count and clipping."""

    def __init__(self, total_steps: int):
        self.estimated_stepping_batches = total_steps
        self.gradient_clip_val = None


def fixed_batches(args) -> list[list[int]] | None:
    """The batch sequence of ``--same-batches`` (written by the parent), or None."""
    if not args.batches_file:
        return None
    return json.loads(Path(args.batches_file).read_text(encoding="utf-8"))


def feed_fixed_batches(batches: list[list[int]]) -> None:
    """Make cs-lightning's training batch sampler yield ``batches`` (in this benchmark process only)."""
    import torch

    from cs_lightning.data.batching import LengthGroupedBatchSampler

    natural = LengthGroupedBatchSampler._global_batches

    def given(self):
        return [torch.tensor(b) for b in batches] if self.shuffle else natural(self)

    LengthGroupedBatchSampler._global_batches = given


def run_plain(args, spec: dict, rec: EpochRecorder) -> dict:
    import torch
    from lightning.pytorch import seed_everything

    conf = resolved_config(spec)
    seed_everything(conf["seed"], verbose=False)
    batches = fixed_batches(args)
    if batches is not None:
        feed_fixed_batches(batches)
    dm = build_datamodule(conf)
    module = build_module(conf, dm)
    device = torch.device(args.device)
    module.to(device)
    module.train()
    loader = dm.train_dataloader()
    module._trainer = _OptimizerTrainerShim(len(loader))
    configured = module.configure_optimizers()
    module._trainer = None
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    loader.collate_fn = RecordingCollator(loader.collate_fn, rec)
    scaler = torch.amp.GradScaler("cuda") if args.precision == "16-mixed" else None
    intent = dm.task == "intent"
    non_blocking = device.type == "cuda"
    rec.report = lambda: finish(rec, args, "plain", spec["case"], module.model, {"optimizer": _impl(optimizer)})
    if rec.clock:
        rec.clock.attach(module.model)
    loader.batch_sampler.set_epoch(0)
    rec.epoch_start()
    for batch in loader:
        batch = {k: v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v for k, v in batch.items()}
        with autocast(args):
            if intent:
                loss = module._loss(module(**module.model_inputs(batch)), batch["labels"])
            else:
                total, tokens = module.token_loss_sum(batch["input_ids"], batch["attention_mask"], batch["labels"])
                loss = total / tokens
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        rec.step_end()
    return rec.report()


def run_cs(args, spec: dict, rec: EpochRecorder) -> dict:
    from lightning.pytorch.callbacks import Callback

    from cs_lightning.commands.train import CSLightningCLI

    batches = fixed_batches(args)
    if batches is not None:
        feed_fixed_batches(batches)

    class EpochTimer(Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            rec.epoch_start()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            rec.step_end()

    class BenchCLI(CSLightningCLI):
        """cs-train exactly, plus the epoch timer and the batch recorder."""

        def instantiate_trainer(self, **kwargs):
            trainer = super().instantiate_trainer(**kwargs)
            callbacks = sorted(type(c).__name__ for c in trainer.callbacks)
            trainer.callbacks.append(EpochTimer())
            dm, make, model = self.datamodule, self.datamodule.collator, self.model
            dm.collator = lambda generation: RecordingCollator(make(generation), rec)
            rec.report = lambda: finish(rec, args, "cs", spec["case"], model.model, {
                "callbacks": callbacks, "optimizer": _impl(trainer.optimizers[0]) if trainer.optimizers else None})
            if rec.clock:
                rec.clock.attach(model.model)
            return trainer

    log_dir = tempfile.mkdtemp(prefix="cs_logs_", dir=args.work_dir)
    argv, sys.argv = sys.argv, ["cs-train"]  # as cs-train sees it (LightningCLI warns about args plus argv)
    try:
        BenchCLI(args=cs_cli_args(spec, args, log_dir))
        return rec.report()
    finally:
        sys.argv = argv
        shutil.rmtree(log_dir, ignore_errors=True)


def run_hf(args, spec: dict, rec: EpochRecorder, grouped: bool) -> dict:
    import torch
    from transformers import (AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                              Trainer, TrainerCallback, TrainingArguments)

    from cs_lightning.pretrained import resolve_model

    if spec["case"] != "banking77":
        raise SystemExit("the HF runners support the banking77 case only")
    conf = resolved_config(spec)
    if args.tokens_file:  # exported by the parent: this process need not import cs-lightning's data code
        tokens = torch.load(args.tokens_file, weights_only=True)
    else:
        tokens = export_tokens(*train_split(spec))
    encoded, labels = tokens["encoded"], tokens["labels"]
    offsets = encoded["offsets"].tolist()
    tokenizer = AutoTokenizer.from_pretrained(tokens["tokenizer_path"])

    class Examples(torch.utils.data.Dataset):
        """The data module's token ids, as the dicts of lists an HF user's tokenized dataset yields."""

        def __init__(self):
            self.rows = []
            for i, label in enumerate(labels.tolist()):
                span = slice(offsets[i], offsets[i + 1])
                row = {"input_ids": encoded["input_ids"][span].tolist(), "labels": label}
                if "token_type_ids" in encoded:
                    row["token_type_ids"] = encoded["token_type_ids"][span].tolist()
                self.rows.append(row)

        def __len__(self):
            return len(self.rows)

        def __getitem__(self, i):
            return self.rows[i]

    train = Examples()
    m = conf["model"]
    names = tokens["label_names"]
    source = resolve_model(m["model_name_or_path"]).path
    config = AutoConfig.from_pretrained(source, num_labels=len(names), id2label=dict(enumerate(names)),
                                        label2id={name: i for i, name in enumerate(names)})
    for key, value in (m.get("config_overrides") or {}).items():
        setattr(config, key, value)
    torch.manual_seed(conf["seed"])
    if m.get("pretrained", True):
        model = AutoModelForSequenceClassification.from_pretrained(source, config=config)
    else:
        model = AutoModelForSequenceClassification.from_config(config)

    class EpochTimer(TrainerCallback):
        def on_epoch_begin(self, targs, state, control, **kwargs):
            rec.epoch_start()

        def on_step_end(self, targs, state, control, **kwargs):
            rec.step_end()

    batches = fixed_batches(args)

    class BenchTrainer(Trainer):
        """The Trainer as is; with ``--same-batches`` its sampler yields the given batch sequence (every batch full
        but the last, so the Trainer's own batching cuts it exactly there)."""

        def _get_train_sampler(self, *a, **kw):
            if batches is None:
                return super()._get_train_sampler(*a, **kw)
            return [i for batch in batches for i in batch]

    out_dir = tempfile.mkdtemp(prefix="hf_out_", dir=args.work_dir)
    try:
        # the optimizer is the Trainer's default (transformers 5: torch AdamW, fused) with cs-lightning's
        # hyperparameters (betas 0.9/0.999, eps 1e-8, weight decay off for biases and norms: the Trainer's defaults
        # too); no gradient clipping, as cs-lightning does not clip by default
        targs = TrainingArguments(
            output_dir=out_dir, per_device_train_batch_size=args.batch_size, num_train_epochs=1,
            learning_rate=m.get("learning_rate", 5e-5), weight_decay=m.get("weight_decay", 0.01),
            warmup_steps=int(args.epoch_steps * m.get("warmup_ratio", 0.1)), lr_scheduler_type="linear",
            label_smoothing_factor=m.get("label_smoothing", 0.0), max_grad_norm=0.0,
            bf16=args.precision == "bf16-mixed", fp16=args.precision == "16-mixed", use_cpu=args.device == "cpu",
            report_to="none", save_strategy="no", eval_strategy="no", seed=conf["seed"],
            train_sampling_strategy="group_by_length" if grouped and batches is None else "random")
        collator = RecordingCollator(DataCollatorWithPadding(tokenizer), rec)
        trainer = BenchTrainer(model=model, args=targs, train_dataset=train, data_collator=collator,
                               processing_class=tokenizer, callbacks=[EpochTimer()])
        if rec.clock:
            rec.clock.attach(model)
        rec.report = lambda: finish(rec, args, "hf_grouped" if grouped else "hf", spec["case"], model, {
            "optimizer": _impl(trainer.optimizer) if trainer.optimizer is not None else None,
            "sampling": "same batches" if batches is not None else targs.train_sampling_strategy})
        trainer.train()
        return rec.report()
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def run_one(args) -> dict:
    """One runner, once, in this process."""
    t0 = args.t0 if args.t0 is not None else time.time()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    owned = args.work_dir is None
    args.work_dir = args.work_dir or tempfile.mkdtemp(prefix="cs_bench_")

    def emit(result: dict, exit_now: bool = True) -> dict:
        result.update({"device": args.device, "precision": args.precision, "batch_size": args.batch_size,
                       "warmup": args.warmup, "steps": args.steps, "model_size": args.model_size})
        line = json.dumps(result)
        if args.result_file:
            Path(args.result_file).write_text(line, encoding="utf-8")
        if sys.stdout.isatty():
            print("\033[?25h", end="")  # a live progress bar may have hidden the cursor
        sys.stderr.write("\n")  # end a progress bar's unfinished line, so the JSON stands on a line of its own
        sys.stderr.flush()
        print(line, flush=True)
        if owned:
            shutil.rmtree(args.work_dir, ignore_errors=True)
        if exit_now:  # skip the runner's teardown (checkpoint writing...): it is after the epoch
            sys.stderr.flush()
            os._exit(0)
        return result

    try:
        if args.runner in ("hf", "hf_grouped") and args.case != "banking77":
            raise SystemExit("the HF runners support the banking77 case only")
        spec = case_spec(args, args.case, args.train_file or train_file(args, args.case, Path(args.work_dir)))
        if args.epoch_steps is None:  # run alone: count the epoch's batches here
            size = len(train_split(spec)[0])
            args.epoch_steps = len(fixed_batches(args) or ()) or math.ceil(size / args.batch_size)
        rec = EpochRecorder(t0, args.epoch_steps, args.warmup, args.steps, args.device == "cuda")
        if args.profile:
            rec.clock = PhaseClock(rec)
        rec.emit = emit
        if args.runner == "plain":
            result = run_plain(args, spec, rec)
        elif args.runner == "cs":
            result = run_cs(args, spec, rec)
        else:
            result = run_hf(args, spec, rec, grouped=args.runner == "hf_grouped")
    except BaseException:
        if owned:
            shutil.rmtree(args.work_dir, ignore_errors=True)
        raise
    return emit(result, exit_now=False)  # reached only if training stopped early (result() then raises)


# ---------------------------------------------------------------------------------------------------- orchestration
def child_command(args, runner: str, case: str, train_path: str, result_file: Path, work_dir: Path,
                  epoch: dict) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--runner", runner, "--case", case,
           "--device", args.device, "--precision", args.precision, "--model-size", args.model_size,
           "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--threads", str(args.threads), "--data-dir", args.data_dir, "--train-file", train_path,
           "--result-file", str(result_file), "--work-dir", str(work_dir), "--epoch-steps", str(epoch["steps"]),
           "--t0", str(time.time())]
    if args.profile:
        cmd.append("--profile")
    if epoch["tokens_file"] and runner.startswith("hf"):
        cmd += ["--tokens-file", epoch["tokens_file"]]
    if epoch["batches_file"]:
        cmd += ["--batches-file", epoch["batches_file"]]
    if args.peak_flops:
        cmd += ["--peak-flops", str(args.peak_flops)]
    if runner in ("plain", "cs"):
        cmd += [arg for item in args.set for arg in ("--set", item)]
    return cmd


def launch(cmd: list[str], log: Path, timeout: float, env: dict) -> tuple[int, str]:
    """Run a child (in this process group, so whoever kills ours kills it too); kill it on timeout."""
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(REPO))
        try:
            return proc.wait(timeout=timeout), ""
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return -9, f"timed out after {timeout:.0f} s"


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def train_split(spec: dict):
    """The training split as cs-lightning tokenizes it, and the data module."""
    dm = build_datamodule(resolved_config(spec))
    dm.setup("fit")
    return dm.datasets["train"], dm


def export_tokens(data, dm) -> dict:
    """A tokenized training split as flat ids + offsets and labels, with the label names and the tokenizer folder:
    what the HF runners train on."""
    encoded = {k: v for k, v in data.encoded.items() if k in ("input_ids", "token_type_ids", "offsets")}
    return {"encoded": encoded, "labels": data.labels, "label_names": list(dm.label_names),
            "tokenizer_path": str(dm.tokenizer_path)}


def prime(args, case: str, train_path: str, work_dir: Path) -> dict:
    """Build the case's data module once here, so tokenizers and token caches are warm for every runner (the
    start-up times then compare runs, not cold caches). Returns the epoch's size (samples, steps), and the files the
    children read: for Banking77 the token ids for the HF runners, with ``--same-batches`` the batch sequence."""
    import torch

    from cs_lightning.data.batching import LengthGroupedBatchSampler

    spec = case_spec(args, case, train_path)
    data, dm = train_split(spec)
    out = {"samples": len(data), "steps": math.ceil(len(data) / args.batch_size), "tokens_file": None,
           "batches_file": None}
    if case == "banking77":
        tokens = export_tokens(data, dm)
        out["tokens_file"] = str(work_dir / f"{case}_tokens.pt")
        torch.save(tokens, out["tokens_file"])
    if args.same_batches:
        # cs-lightning's own first epoch (length-grouped, shuffled), its one short batch moved to the end so that
        # the HF Trainer, which cuts a flat index order into batches, makes exactly the same batches
        sampler = LengthGroupedBatchSampler(data.lengths, args.batch_size, shuffle=True, seed=dm.hparams.seed,
                                            mega_batch=dm.hparams.get("mega_batch", 50))
        sampler.set_epoch(0)
        batches = list(sampler)
        full = [b for b in batches if len(b) == args.batch_size]
        batches = full + [b for b in batches if len(b) != args.batch_size]
        out["batches_file"] = str(work_dir / f"{case}_batches.json")
        Path(out["batches_file"]).write_text(json.dumps(batches), encoding="utf-8")
        out["steps"] = len(batches)
    return out


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarise(results: list[dict]) -> dict:
    keys = ("epoch_s", "samples_per_s", "tokens_per_s", "step_ms", "window_samples_per_s", "window_tokens_per_s",
            "startup_s", "first_step_s", "peak_rss_mb", "pad_fraction", "mean_padded_length", "cpu_util",
            "peak_gpu_mb", "mfu")
    out = {k: median([r.get(k) for r in results]) for k in keys}
    out["repeats"] = len(results)
    if results and "phases_s" in results[0]:
        out["phases_s"] = {k: median([r["phases_s"][k] for r in results]) for k in results[0]["phases_s"]}
    out["epoch_s_all"] = [round(r["epoch_s"], 2) for r in results]
    out["epoch_s_min"] = min(out["epoch_s_all"], default=None)
    out["epoch_s_max"] = max(out["epoch_s_all"], default=None)
    if results:
        first = results[0]
        for k in ("samples", "epoch_steps", "real_tokens", "padded_tokens", "params", "params_matmul", "threads",
                  "optimizer", "callbacks", "sampling"):
            if k in first:
                out[k] = first[k]
    return out


def ratio(cs: dict | None, other: dict | None) -> float | None:
    """Epoch-time ratio: the other runner's median epoch time over cs-lightning's (above 1: cs-lightning faster)."""
    if not cs or not other or not cs.get("epoch_s") or not other.get("epoch_s"):
        return None
    return round(other["epoch_s"] / cs["epoch_s"], 3)


def window_ratio(cs: dict | None, other: dict | None) -> float | None:
    """The old windowed figure: samples/s of cs-lightning over the other's, steps W+1..W+N."""
    if not cs or not other or not cs.get("window_samples_per_s") or not other.get("window_samples_per_s"):
        return None
    return round(cs["window_samples_per_s"] / other["window_samples_per_s"], 3)


def machine_info(args) -> dict:
    import lightning
    import torch
    import transformers

    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu_count": os.cpu_count(), "cpu": name, "threads": args.threads,
            "load_avg_1min": {"start": round(args.load_start, 2), "end": round(os.getloadavg()[0], 2)},
            "torch": torch.__version__,
            "lightning": lightning.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "device": args.device, "device_name": name}
    if args.device == "cuda":
        info["device_name"] = torch.cuda.get_device_name()
        info["peak_flops"] = args.peak_flops or peak_flops(info["device_name"])
    return info


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(cases: dict, cuda: bool) -> str:
    head = ["case", "runner", "epoch s (min-max)", "samples/s", "real tok/s", "padded tok", "pad %",
            "window samples/s", "window tok/s", "start-up s", "peak RSS MB", "CPU %", "runs"]
    if cuda:
        head += ["GPU MB", "MFU %"]
    rows = [head]
    for case, data in cases.items():
        for runner, s in data["runners"].items():
            if not s.get("repeats"):
                rows.append([case, runner, "failed"] + [""] * (len(head) - 3))
                continue
            row = [case, runner, f"{s['epoch_s']:.1f} ({s['epoch_s_min']:.1f}-{s['epoch_s_max']:.1f})",
                   fmt(s["samples_per_s"], ".1f"), fmt(s["tokens_per_s"], ".0f"), fmt(s.get("padded_tokens"), ","),
                   fmt(None if s["pad_fraction"] is None else 100 * s["pad_fraction"], ".1f"),
                   fmt(s["window_samples_per_s"], ".1f"), fmt(s["window_tokens_per_s"], ".0f"),
                   fmt(s["startup_s"], ".1f"), fmt(s["peak_rss_mb"], ".0f"),
                   fmt(None if s["cpu_util"] is None else 100 * s["cpu_util"], ".0f"), str(s["repeats"])]
            if cuda:
                row += [fmt(s["peak_gpu_mb"], ".0f"), fmt(None if s["mfu"] is None else 100 * s["mfu"], ".1f")]
            rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def orchestrate(args) -> dict:
    started = time.time()
    args.load_start = os.getloadavg()[0]
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONWARNINGS": "ignore"}
    work_dir = Path(tempfile.mkdtemp(prefix="cs_bench_"))
    cases: dict = {}
    try:
        for case in args.cases:
            runners = [r for r in args.runners if r in CASES[case][2]]
            if args.same_batches and "hf" in runners and "hf_grouped" in runners:
                runners.remove("hf_grouped")  # fed the same batches, the two HF runs are one
            train_path = train_file(args, case, work_dir)
            epoch = prime(args, case, train_path, work_dir)
            print(f"[{time.time() - started:5.0f}s] {case}: one epoch = {epoch['samples']:,} samples in "
                  f"{epoch['steps']} steps{' (the same batches for every runner)' if args.same_batches else ''}",
                  flush=True)
            results: dict = {r: [] for r in runners}
            errors: dict = {}
            for rep in range(args.repeats):
                order = runners if rep % 2 == 0 else runners[::-1]
                for runner in order:
                    tag = f"{case}_{runner}_{rep}"
                    result_file, log = work_dir / f"{tag}.json", work_dir / f"{tag}.log"
                    cmd = child_command(args, runner, case, train_path, result_file, work_dir, epoch)
                    begin = time.time()
                    code, why = launch(cmd, log, args.child_timeout, env)
                    res = json.loads(result_file.read_text(encoding="utf-8")) if result_file.exists() else None
                    if code == 0 and res and res["samples"] != epoch["samples"]:
                        code, why = 1, (f"trained on {res['samples']} samples in its epoch, not the "
                                        f"{epoch['samples']} of the split")
                    if code == 0 and res:
                        results[runner].append(res)
                        print(f"[{time.time() - started:5.0f}s] {case:9s} {runner:10s} run {rep + 1}: epoch "
                              f"{res['epoch_s']:6.1f} s  {res['samples_per_s']:7.1f} samples/s  "
                              f"{res['tokens_per_s']:7.0f} tokens/s  padding {100 * res['pad_fraction']:4.1f}%  "
                              f"CPU {100 * res['cpu_util']:3.0f}%  start-up {res['startup_s']:4.1f} s  "
                              f"({time.time() - begin:.0f} s)", flush=True)
                    else:
                        errors.setdefault(runner, []).append(why or f"exit code {code}: {tail(log)}")
                        print(f"[{time.time() - started:5.0f}s] {case:9s} {runner:10s} run {rep + 1}: FAILED "
                              f"({why or f'exit code {code}'}); log tail:\n{tail(log)}", file=sys.stderr, flush=True)
            summary = {r: summarise(results[r]) for r in runners}
            for r, errs in errors.items():
                summary[r]["error"] = errs[-1][-2000:]
                summary[r]["failures"] = len(errs)
            others = [r for r in runners if r != "cs"]
            cases[case] = {"epoch": {"samples": epoch["samples"], "steps": epoch["steps"]}, "runners": summary,
                           "ratios": {f"cs_vs_{r}": ratio(summary.get("cs"), summary.get(r)) for r in others},
                           "window_ratios": {f"cs_vs_{r}": window_ratio(summary.get("cs"), summary.get(r))
                                             for r in others}}
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    main = cases.get("banking77", {"runners": {}, "ratios": {}, "window_ratios": {}})
    out = {"cs_vs_plain": main["ratios"].get("cs_vs_plain"), "cs_vs_hf": main["ratios"].get("cs_vs_hf"),
           "cs_vs_hf_grouped": main["ratios"].get("cs_vs_hf_grouped"), "ratio_of": "epoch time",
           "window_ratios": main.get("window_ratios"), "epoch": main.get("epoch"), "runners": main["runners"]}
    if "sgd" in cases:
        out["sgd_cs_vs_plain"] = cases["sgd"]["ratios"].get("cs_vs_plain")
    out["cases"] = {case: data for case, data in cases.items() if case != "banking77"}  # Banking77 is above
    out["settings"] = {"device": args.device, "precision": args.precision, "model_size": args.model_size,
                       "batch_size": args.batch_size, "window": [args.warmup, args.steps], "repeats": args.repeats,
                       "train_limit": args.train_limit, "same_batches": args.same_batches, "cases": args.cases,
                       "runners": args.runners, "quick": args.quick, "set": args.set}
    out["machine"] = machine_info(args)
    out["command"] = " ".join(["python", "tools/benchmark.py"] + sys.argv[1:])
    out["wall_s"] = round(time.time() - started, 1)
    return _rounded(out)


def _rounded(value):
    if isinstance(value, float):
        return round(value, 4) if abs(value) < 100 else round(value, 1)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.runner:
        return run_one(args)
    result = orchestrate(args)
    cases = {**({"banking77": {"runners": result["runners"]}} if result["runners"] else {}), **result["cases"]}
    print()
    if args.quick:
        print(f"--quick: a fixed subset of {args.train_limit:,} Banking77 training examples (seeded), "
              f"{args.threads} thread(s): compare the ratios, take absolute figures from a full run")
    print(table(cases, args.device == "cuda"))
    if args.profile:
        print("\nwhere the epoch goes (medians, seconds): " + ", ".join(PhaseClock.PHASES) + ", rest")
        for case, data in cases.items():
            for runner, summary in data["runners"].items():
                if summary.get("phases_s"):
                    print(f"  {case:9s} {runner:10s} " + "  ".join(f"{k} {v:6.2f}"
                                                                 for k, v in summary["phases_s"].items()))
    starved = [f"{case}/{runner}" for case, data in cases.items() for runner, s in data["runners"].items()
               if s.get("cpu_util") is not None and s["cpu_util"] < 0.8]
    if starved and args.device == "cpu":
        print(f"note: {', '.join(starved)} got under 80% of their threads' CPU time (machine load "
              f"{result['machine']['load_avg_1min']}): other work was running, so these figures are noisy")
    print(f"cs_vs_plain {result['cs_vs_plain']}  cs_vs_hf {result['cs_vs_hf']}  "
          f"cs_vs_hf_grouped {result['cs_vs_hf_grouped']}  (the other runner's median epoch time over cs-lightning's, "
          "Banking77; above 1: cs-lightning finishes the epoch first)")
    line = json.dumps(result)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(line, flush=True)
    return result


if __name__ == "__main__":
    main()
