"""Speed options that change how a step runs: they must not change what is trained or saved."""

import pytest
import torch

from conftest import tiny_intent_files
from test_cli import tiny_args
from cs_lightning.commands.train import main


def test_training_step_loss_needs_no_host_sync_for_out_of_scope_labels():
    """Examples without a class are masked with ignore_index: same loss as dropping them."""
    import torch.nn.functional as F

    from cs_lightning.models.intent import IntentClassifier

    logits = torch.randn(5, 3)
    labels = torch.tensor([0, 3, 2, 3, 1])  # 3: out of scope, no class
    module = IntentClassifier.__new__(IntentClassifier)
    torch.nn.Module.__init__(module)
    module._hparams = type("H", (dict,), {"__getattr__": dict.__getitem__})(label_smoothing=0.1)
    module.register_buffer("loss_weights", None)
    expected = F.cross_entropy(logits[labels < 3], labels[labels < 3], label_smoothing=0.1)
    assert torch.allclose(module._loss(logits, labels), expected)


def test_compile_without_a_compiler_is_one_line(tmp_path, capsys, monkeypatch):
    import torch._inductor.config

    monkeypatch.setattr(torch._inductor.config.cpp, "cxx", ("no-such-c++-compiler",))
    files = tiny_intent_files(tmp_path / "data")
    with pytest.raises(SystemExit) as exit_:
        main(["fit", *tiny_args(files), "--model.compile=true", "--trainer.max_steps=1"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cs-train: error: model.compile: torch.compile on a CPU needs a C++")
    assert not (tmp_path / "logs").exists() or not list((tmp_path / "logs").rglob("*.ckpt"))


@pytest.mark.slow
def test_compiled_model_with_length_buckets_trains_and_saves_plain_weights(tmp_path):
    files = tiny_intent_files(tmp_path / "data")
    main(["fit", *tiny_args(files), "--model.compile=true", "--data.pad_to_buckets=[8, 16, 32]",
          "--trainer.max_epochs=2", "--experiment=compiled"])
    main(["fit", *tiny_args(files), "--trainer.max_epochs=2", "--experiment=eager"])
    compiled = torch.load(tmp_path / "logs/compiled/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    eager = torch.load(tmp_path / "logs/eager/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    assert compiled.keys() == eager.keys()  # no _orig_mod. prefixes: export, chat and resume read it as usual
