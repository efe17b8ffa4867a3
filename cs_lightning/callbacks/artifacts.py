"""Files written beside a run's checkpoints and predictions, always atomically."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BasePredictionWriter, Callback

from cs_lightning.distributed import gather_lists
from cs_lightning.export import export
from cs_lightning.io import atomic_dir, atomic_path
from cs_lightning.prompts import chat_messages


class SaveArtifacts(Callback):
    """When fitting starts, saves beside the checkpoints what reading them needs: the tokenizer
    (``tokenizer/``, with its chat template), the Hugging Face model config (``config.json``), the business rules
    (``rules.yaml``) and the chat format's system prompt (``system_prompt.txt``, also in the checkpoint), so
    test, predict, chat and export never need the original sources again."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        ckpt = trainer.checkpoint_callback
        if ckpt is None or not getattr(ckpt, "dirpath", None) or not trainer.is_global_zero:
            return
        folder = Path(ckpt.dirpath)
        tokenizer = getattr(pl_module, "tokenizer", None)
        if tokenizer is not None:
            atomic_dir(folder / "tokenizer", lambda tmp: tokenizer.save_pretrained(str(tmp)))
        model = getattr(pl_module, "model", None)
        if hasattr(model, "config") and hasattr(model.config, "to_json_string"):
            with atomic_path(folder / "config.json") as tmp:
                tmp.write_text(model.config.to_json_string(), encoding="utf-8")
        system_prompt = getattr(pl_module, "hparams", {}).get("system_message")
        if system_prompt:  # for people: the checkpoint's settings carry it to chat, predict and export
            with atomic_path(folder / "system_prompt.txt") as tmp:
                tmp.write_text(system_prompt + "\n", encoding="utf-8")
        rules = getattr(getattr(pl_module, "rules", None), "source", "")
        if rules and Path(rules).exists():
            with atomic_path(folder / "rules.yaml") as tmp:
                shutil.copyfile(rules, tmp)


class PredictionWriter(BasePredictionWriter):
    """Writes the predictions of ``cs-train predict`` as JSON Lines, one line per input in input order.

    Intent models: ``{"id", "text", "label", ...}``. Reply models: ``{"id", "reply"}`` for dialogue records, and for
    ``{"messages": [...]}`` records the conversation in the same format with the one generated assistant message
    appended, ``{"id", "messages": [...input messages, {"role": "assistant", "content": reply}]}`` (the input's own
    system message kept, none added), so the output reads back as messages records.

    Args:
        output_file: where to write; the file appears whole or not at all.
    """

    def __init__(self, output_file: str):
        super().__init__(write_interval="epoch")
        self.output_file = output_file

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        # every rank predicted its own share: gather them (a collective, so before the rank-zero check)
        rows = gather_lists([row for batch in predictions for row in batch])
        if not trainer.is_global_zero:
            return
        records = getattr(trainer.datamodule, "predict_records", lambda: [])()
        order = {rec.id: i for i, rec in enumerate(records)}
        texts = {rec.id: rec.text for rec in records if hasattr(rec, "text")}
        conversations = {rec.id: rec for rec in records if getattr(rec, "from_messages", False)}
        rows.sort(key=lambda row: order.get(row["id"], len(order)))
        with atomic_path(self.output_file) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                for row in rows:
                    if row["id"] in texts:
                        row = {"id": row["id"], "text": texts[row["id"]], **{k: v for k, v in row.items() if k != "id"}}
                    elif row["id"] in conversations and "reply" in row:
                        rec = conversations[row["id"]]
                        row = {"id": row["id"], "messages": chat_messages(rec.context, rec.system)
                               + [{"role": "assistant", "content": row["reply"]}]}
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"Wrote {len(rows)} predictions to {self.output_file}")


class HParamsSummary(Callback):
    """Fills TensorBoard's HParams tab: each run's hyper-parameters (model and data) with its final metrics, written
    when fitting and testing end, so runs can be compared there as in ``cs-runs``."""

    KEEP = ("val/", "test/")

    @staticmethod
    def _plain(value):
        return value if isinstance(value, (int, float, str, bool)) else str(value)

    def _write(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        logger = trainer.logger
        if logger is None or not trainer.is_global_zero or not hasattr(logger, "log_hyperparams"):
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                   if k.startswith(self.KEEP) and getattr(v, "numel", lambda: 1)() == 1}
        ckpt = trainer.checkpoint_callback
        if ckpt is not None and getattr(ckpt, "best_model_score", None) is not None:
            metrics[f"best/{ckpt.monitor}"] = float(ckpt.best_model_score)
        if not metrics:
            return
        params = {f"model/{k}": self._plain(v) for k, v in pl_module.hparams.items() if k != "labels"}
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "hparams"):
            params.update({f"data/{k}": self._plain(v) for k, v in datamodule.hparams.items()})
        logger.log_hyperparams(params, metrics=metrics)

    def on_fit_end(self, trainer, pl_module) -> None:
        self._write(trainer, pl_module)

    def on_test_end(self, trainer, pl_module) -> None:
        self._write(trainer, pl_module)


class ExportBest(Callback):
    """Exports the best checkpoint (or the last, when none is monitored) as a Hugging Face folder when fitting ends,
    exactly as ``cs-export`` does::

        trainer:
          callbacks:
            - class_path: cs_lightning.callbacks.ExportBest
              init_args: {output_dir: exported/bert_intent}

    Args:
        output_dir: the folder to write (replaced whole).
    """

    def __init__(self, output_dir: str):
        self.output_dir = output_dir

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        ckpt = trainer.checkpoint_callback
        path = (getattr(ckpt, "best_model_path", "") or getattr(ckpt, "last_model_path", "")) if ckpt else ""
        if not path or not trainer.is_global_zero:
            return
        export(path, self.output_dir)
        print(f"Exported {path} to {self.output_dir}")
