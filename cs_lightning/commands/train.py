"""``cs-train``: LightningCLI with cs-lightning's defaults.

- model and data in subclass mode (``class_path`` + ``init_args``), so a user's own classes plug in;
- the backbone, model type and tokenizer source go from model to data, the label set and tokenizer folder from data
  to model;
- TensorBoard logs under ``logs/<experiment>/version_N/``, checkpoints in ``logs/<experiment>/checkpoints/``
  (``best-*.ckpt`` by ``val/f1_macro`` for intents or ``val/loss`` for replies, and ``last.ckpt``), the tokenizer,
  model config and business rules beside them; ``--ckpt_path best|last`` finds them in a new process;
- the data module's task follows the model class (``IntentClassifier``: intent, ``ReplyGenerator``: reply);
- errors in the user's input print as one line, never a traceback; an unknown key names the closest valid one;
- what every run would print without telling the user anything is filtered, each filter by logger or warning and
  message (:func:`quiet_expected_noise`); ``fit`` ends with where the checkpoints are and what to run next.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from pathlib import Path
from typing import Optional

from jsonargparse import ArgumentError
from lightning.pytorch.callbacks import LearningRateMonitor, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.environments import ClusterEnvironment, SLURMEnvironment

from cs_lightning.callbacks import (BestAndLastCheckpoint, FitSummary, HParamsSummary, IntentReport, MetricsFile,
                                    NonFiniteGuard, PredictionWriter, Preemption, RandomState, SaveArtifacts)
from cs_lightning.checkpoints import check_task, check_vocabulary, read_checkpoint
from cs_lightning.commands import run_command
from cs_lightning.commands.arguments import argument_error
from cs_lightning.commands.console import WITHOUT_FLOPS, RunProgressBar, quiet_expected_noise
from cs_lightning.errors import ConfigError

LOG_DIR = "logs"
TENSORBOARD = "lightning.pytorch.loggers.TensorBoardLogger"


def _attribute(data, name: str):
    return getattr(data, name, None)


def _uses_chat(data) -> bool:
    return getattr(data, "prompt_format", None) == "chat"


class CSLightningCLI(LightningCLI):
    """The cs-lightning command line: ``fit``, ``validate``, ``test`` and ``predict`` driven by YAML configs."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("trainer_defaults", {
            "logger": {"class_path": TENSORBOARD, "init_args": {"save_dir": LOG_DIR, "default_hp_metric": False}},
            "plugins": {"class_path": "cs_lightning.checkpoints.AtomicCheckpointIO"},
            "log_every_n_steps": 10,
        })
        quiet_expected_noise()
        super().__init__(*args, **kwargs)

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        """As LightningCLI, but a wrong key or value is one line (:func:`argument_error`) instead of the usage text
        and jsonargparse's tree of sub-errors. ``--help`` and ``--print_config`` are unchanged."""
        parsers = [parser, *getattr(self, "_subcommand_parsers", {}).values()]
        before = [p.exit_on_error for p in parsers]
        for p in parsers:
            p.exit_on_error = False  # jsonargparse raises ArgumentError instead of printing usage and exiting
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:
            given = sys.argv[1:] if args is None else args
            argv = [str(a) for a in given] if isinstance(given, (list, tuple)) else []  # not for a dict of values
            subcommand = next((a for a in argv if a in getattr(self, "_subcommand_parsers", {})), None)
            keys_of = self._subcommand_parsers[subcommand] if subcommand else parser

            def valid_keys() -> list[str]:
                try:
                    return list(keys_of.get_defaults().keys())
                except Exception:  # noqa: BLE001 - suggestions only; the option names will do
                    return [a.dest for a in keys_of._actions]

            raise argument_error(str(err), argv, valid_keys, subcommand) from None
        finally:
            for p, exit_on_error in zip(parsers, before):
                p.exit_on_error = exit_on_error

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--experiment", type=Optional[str], default=None,
                            help="Run name: logs go to logs/<experiment>/version_N, checkpoints to "
                                 "logs/<experiment>/checkpoints. Default: the first config file's name.")
        parser.add_argument("--predict_output", type=Optional[str], default=None,
                            help="JSON Lines file for `predict` (default: logs/<experiment>/predictions.jsonl).")
        parser.add_lightning_class_args(BestAndLastCheckpoint, "checkpoint")
        # monitor, mode and filename default by task (intent: val/f1_macro, max; reply: val/loss, min)
        parser.set_defaults({"checkpoint.auto_insert_metric_name": False, "checkpoint.save_top_k": 1,
                             "checkpoint.save_last": True})
        parser.link_arguments("model.init_args.backbone", "data.init_args.backbone")
        parser.link_arguments("model.init_args.model_type", "data.init_args.model_type")
        parser.link_arguments("model.init_args.model_name_or_path", "data.init_args.tokenizer")
        parser.link_arguments("model.init_args.trust_remote_code", "data.init_args.trust_remote_code")
        parser.link_arguments("data.init_args.language", "model.init_args.language")
        parser.link_arguments("data.init_args.oos_label", "model.init_args.oos_label")
        # values known once the data is read; a user's own DataModule without them simply passes None
        for attr, target in (("label_names", "labels"), ("label_counts", "label_counts"),
                             ("tokenizer_path", "tokenizer_path"), ("rules_path", "rules_path"),
                             ("system_prompt", "system_message")):
            parser.link_arguments("data", f"model.init_args.{target}", apply_on="instantiate",
                                  compute_fn=functools.partial(_attribute, name=attr))
        # the reply prompt format as resolved (data.prompt_format auto: chat when the tokenizer has a template)
        parser.link_arguments("data", "model.init_args.chat", apply_on="instantiate", compute_fn=_uses_chat)

    # ------------------------------------------------------------------ defaults that depend on the config
    def _experiment(self, cfg) -> str:
        if cfg.get("experiment"):
            return cfg.experiment
        configs = cfg.get("config") or []
        if configs:
            first = configs[0]
            name = getattr(first, "relative", None) or getattr(first, "abs_path", None) or str(first)
            return Path(str(name)).stem
        model = cfg.get("model") or {}
        backbone = (model.get("init_args") or {}).get("backbone", "model") if hasattr(model, "get") else "model"
        return f"{backbone}_run"

    @staticmethod
    def _class_of(section) -> type | None:
        try:
            module, _, name = section.class_path.rpartition(".")
            return getattr(importlib.import_module(module), name)
        except (AttributeError, ImportError, ValueError):
            return None

    @classmethod
    def _task_of(cls, cfg) -> str | None:
        """The task of the configured model class (``intent``, ``reply``), None for other modules."""
        return getattr(cls._class_of(cfg.model), "task", None) or None

    def _check_tasks(self, cfg) -> str | None:
        """The model's task, after checking that the data module serves it (a dialogue module for a reply model)."""
        task = self._task_of(cfg)
        data_class = self._class_of(cfg.data)
        data_task = getattr(data_class, "task", None) or None
        if task and data_task and task != data_task:
            from cs_lightning.data import DOMAIN_MODULES

            domain = getattr(data_class, "domain", None)
            match = DOMAIN_MODULES.get(domain, {}).get(task) if domain else None
            generic = {"intent": "IntentDataModule", "reply": "DialogueDataModule"}.get(task, "")
            use = f"cs_lightning.data.{match.__name__ if match else generic}"
            raise ConfigError("data.class_path", f"{data_class.__name__} serves {data_task} data, but the model "
                              f"{cfg.model.class_path.rpartition('.')[2]} needs {task} data", f"use {use}")
        return task

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        task = self._check_tasks(cfg)
        ckpt = cfg.checkpoint
        if ckpt.get("monitor") is None:
            ckpt.monitor, ckpt.mode = ("val/loss", "min") if task == "reply" else ("val/f1_macro", "max")
        if ckpt.get("filename") is None:
            ckpt.filename = f"best-epoch{{epoch:02d}}-{ckpt.monitor.replace('/', '_')}{{{ckpt.monitor}:.4f}}"
        experiment = self._experiment(cfg)
        cfg.experiment = experiment
        run_dir = Path(LOG_DIR) / experiment
        loggers = cfg.trainer.get("logger")
        loggers = loggers if isinstance(loggers, list) else [loggers]
        for logger in reversed(loggers):  # the first TensorBoard logger decides the run folder
            if not hasattr(logger, "get") or logger.get("init_args") is None:
                continue
            init = logger.init_args
            if logger.get("class_path") == TENSORBOARD:
                if init.get("name") in (None, "lightning_logs"):
                    init.name = experiment
                run_dir = Path(init.save_dir) / init.name
            elif logger.get("class_path", "").endswith("WandbLogger") and not init.get("name"):
                init.name = experiment
        if cfg.checkpoint.get("dirpath") is None:
            cfg.checkpoint.dirpath = str(run_dir / "checkpoints")
        if cfg.get("predict_output") is None:
            cfg.predict_output = str(run_dir / "predictions.jsonl")
        if self.subcommand and cfg.get("ckpt_path") in ("best", "last") and self.subcommand != "fit":
            cfg.ckpt_path = self._find_checkpoint(Path(cfg.checkpoint.dirpath), cfg.ckpt_path)
        if self.subcommand in ("validate", "test", "predict") and cfg.get("ckpt_path"):
            self._read_with_the_checkpoint(cfg, Path(cfg.ckpt_path))
        elif self.subcommand == "fit" and cfg.get("ckpt_path") == "last":
            last = Path(cfg.checkpoint.dirpath) / "last.ckpt"
            if not last.exists():
                raise ConfigError("ckpt_path", f"no last.ckpt in {cfg.checkpoint.dirpath} to resume from",
                                  "train first, or give the path of a checkpoint")
            # read here with weights_only, as every file named directly is (_parse_ckpt_path): some strategies
            # (FSDP's full checkpoints) restore through an unpickler of their own that would run code
            self._checkpoint(last)
        elif self.subcommand == "fit" and cfg.get("ckpt_path"):
            named = Path(cfg.ckpt_path if cfg.ckpt_path != "best" else
                         self._find_checkpoint(Path(cfg.checkpoint.dirpath), "best"))
            if named.is_file() and "optimizer_states" not in self._checkpoint(named):
                raise ConfigError("ckpt_path", f"{named} holds the weights only (best checkpoints do: they are for "
                                               "test, validate, predict and cs-export), not a training state to resume",
                                  "resume with --ckpt_path last")

    def _checkpoint(self, path) -> dict:
        """The checkpoint at ``path`` read once with weights_only and mapped, not loaded: its hyper-parameters are
        asked for while parsing, configuring the data and checking the vocabulary."""
        read = self.__dict__.setdefault("_read_checkpoints", {})
        key = str(Path(path).resolve())
        if key not in read:
            read[key] = read_checkpoint(path, "ckpt_path", mmap=True)
        return read[key]

    def _read_with_the_checkpoint(self, cfg, ckpt: Path) -> None:
        """validate/test/predict read their data as the checkpoint's model was trained to: with the tokenizer saved
        beside it (never a new one trained on the day's files) and, for intents, its label set in its order. The
        training file is then needed only to carve the split from: when it is absent (a machine that holds only the
        checkpoint folder and the new file), it is not read."""
        init = cfg.data.get("init_args") if hasattr(cfg.data, "get") else None
        if init is None:
            return
        tokenizer = ckpt.parent / "tokenizer"
        if "tokenizer" in init and tokenizer.is_dir():
            init.tokenizer = str(tokenizer)
        hparams = self._checkpoint(ckpt).get("hyper_parameters", {})
        if "trained_labels" in init and hparams.get("labels"):
            init.trained_labels = list(hparams["labels"])
            if hparams.get("label_counts"):
                init.trained_label_counts = list(hparams["label_counts"])
        split = {"validate": "val_file", "test": "test_file", "predict": "predict_file"}[self.subcommand]
        train = init.get("train_file")
        if init.get(split) and train and not Path(train).exists():
            init.train_file = None

    def after_instantiate_classes(self) -> None:
        super().after_instantiate_classes()
        ckpt = self.config[self.subcommand].get("ckpt_path") if self.subcommand else None
        if self.subcommand in ("validate", "test", "predict") and ckpt and Path(ckpt).is_file():
            check_vocabulary(self._checkpoint(ckpt), self.model, ckpt)

    def _parse_ckpt_path(self) -> None:
        """As Lightning: a checkpoint file given to validate/test/predict brings the model's hyper-parameters with
        it. Unlike Lightning, the ones the model class does not take are dropped first: cs-train links values such
        as ``rules_path`` into every model, they are saved with the hyper-parameters, and a class without that
        argument would fail to build from its own checkpoint."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or ckpt_path in ("best", "last", "hpc", "registry"):
            return
        import inspect

        # mmap: only the hyper-parameters are read here; the weights stay on disk until the trainer loads them
        checkpoint = self._checkpoint(ckpt_path)
        task = self._task_of(self.config[subcommand])
        if task:
            check_task(checkpoint, task, ckpt_path, fix="give a checkpoint of this config's model, or the config "
                                                        "the checkpoint was trained with")
        hparams = dict(checkpoint.get("hyper_parameters", {}))
        hparams.pop("_instantiator", None)
        class_path = hparams.pop("_class_path", None)
        if not hparams or class_path is None:
            return
        try:
            module, _, name = class_path.rpartition(".")
            params = inspect.signature(getattr(importlib.import_module(module), name)).parameters
        except (ImportError, AttributeError, ValueError):
            return
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            hparams = {k: v for k, v in hparams.items() if k in params}
        self.config = self.parser.parse_object(
            {subcommand: {"model": {"class_path": class_path, "dict_kwargs": hparams}}}, self.config)

    @staticmethod
    def _find_checkpoint(folder: Path, which: str) -> str:
        pattern = "best*.ckpt" if which == "best" else "last*.ckpt"
        found = sorted(folder.glob(pattern), key=lambda p: p.stat().st_mtime)
        if not found:
            raise ConfigError("ckpt_path", f"no {pattern} in {folder}",
                              "run `cs-train fit` with this config first, or give the checkpoint's path")
        return str(found[-1])

    def instantiate_trainer(self, **kwargs):
        cfg = self.config_init[self.subcommand] if self.subcommand else self.config_init
        callbacks = list(cfg.trainer.get("callbacks") or [])

        def add(kind: type, make=None) -> None:
            """Adds a default callback unless the config already has one of its kind."""
            if not any(isinstance(c, kind) for c in callbacks):
                callbacks.append(make() if make else kind())

        if cfg.trainer.get("enable_progress_bar", True) is not False:
            # refreshed at logging steps only: each refresh reads the logged loss back from the device (a sync)
            every = max(1, int(cfg.trainer.get("log_every_n_steps") or 1))
            add(ProgressBar, lambda: RunProgressBar(refresh_rate=every))
        add(SaveArtifacts)
        if cfg.trainer.get("logger"):
            add(LearningRateMonitor, lambda: LearningRateMonitor(logging_interval="step"))
            add(HParamsSummary)
        if self.subcommand == "fit":
            add(Preemption)
            add(NonFiniteGuard)
            add(RandomState)
            configs = [getattr(c, "relative", None) or str(c) for c in self.config[self.subcommand].get("config") or []]
            add(FitSummary, lambda: FitSummary(experiment=cfg.get("experiment"), configs=configs))
        if self.subcommand in ("validate", "test"):
            add(MetricsFile)
        if self.subcommand == "test":
            add(IntentReport)
        plugins = cfg.trainer.get("plugins")
        plugins = list(plugins) if isinstance(plugins, (list, tuple)) else ([plugins] if plugins else [])
        if SLURMEnvironment.detect() and not any(isinstance(p, ClusterEnvironment) for p in plugins):
            # one pre-emption path everywhere (Preemption: last.ckpt + clean exit); Lightning's own SLURM requeue
            # would save a second, differently named checkpoint and requeue behind the job script's back
            plugins.append(SLURMEnvironment(auto_requeue=False))
            cfg.trainer.plugins = plugins
        if self.subcommand == "predict":
            callbacks.append(PredictionWriter(cfg.predict_output))
        cfg.trainer.callbacks = callbacks
        trainer = super().instantiate_trainer(**kwargs)
        for callback in trainer.callbacks:
            # Lightning's own summary (exactly its class: a user's subclass is left alone) prints FLOPs of 0 for a
            # model without example_input_array; the subclass prints the same without them, state untouched
            if type(callback) in WITHOUT_FLOPS:
                callback.__class__ = WITHOUT_FLOPS[type(callback)]
        return trainer


def main(args: list[str] | None = None) -> None:
    """Entry point of ``cs-train``."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    def body() -> None:
        CSLightningCLI(args=args)

    run_command("cs-train", body)


if __name__ == "__main__":
    main()
