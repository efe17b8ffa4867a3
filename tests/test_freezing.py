"""Freezing callbacks for every backbone family, through the plugins' layer groups."""

import pytest

from conftest import tiny_intent_files
from cs_lightning.callbacks.freezing import FreezeLayers, GradualUnfreezing
from cs_lightning.commands.train import CSLightningCLI
from cs_lightning.data import IntentDataModule
from cs_lightning.errors import ConfigError
from cs_lightning.models import IntentClassifier


def tiny(tmp_path, backbone):
    dm = IntentDataModule(train_file=str(tiny_intent_files(tmp_path)["train"]), backbone=backbone)
    model = IntentClassifier(backbone=backbone, pretrained=False, model_size="tiny", labels=dm.label_names,
                             tokenizer_path=dm.tokenizer_path)
    return dm, model


def trainable_names(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("backbone", ["bert", "gpt", "t5"])
def test_freeze_bottom_blocks_leaves_top_and_head_trainable(tmp_path, backbone):
    _, model = tiny(tmp_path, backbone)
    groups = model.backbone.layer_groups(model.model)
    FreezeLayers(num_frozen_blocks=-1).freeze_before_training(model)
    trainable = trainable_names(model)
    top = {id(p) for m in groups[-1].modules for p in m.parameters()}
    lower = {id(p) for g in groups[:-1] for m in g.modules for p in m.parameters()}
    by_id = {id(p): p for p in model.parameters()}
    assert all(by_id[i].requires_grad for i in top)
    assert not any(by_id[i].requires_grad for i in lower)
    head = {n for n, p in model.named_parameters() if id(p) not in top | lower}
    assert head and head <= trainable
    assert all(not m.training for g in groups[:-1] for m in g.modules)


def test_negative_and_positive_counts_and_bad_values(tmp_path):
    _, model = tiny(tmp_path, "bert")  # 2 blocks
    FreezeLayers(num_frozen_blocks=1).freeze_before_training(model)
    assert not any(p.requires_grad for p in model.model.bert.encoder.layer[0].parameters())
    assert all(p.requires_grad for p in model.model.bert.encoder.layer[1].parameters())
    with pytest.raises(ConfigError, match="num_frozen_blocks: 3 but the backbone has 2 blocks"):
        FreezeLayers(num_frozen_blocks=3).freeze_before_training(model)


def test_backbone_without_layer_groups_is_an_error(tmp_path, monkeypatch):
    _, model = tiny(tmp_path, "bert")
    monkeypatch.setattr(type(model.backbone), "layer_groups", lambda self, m: [])
    with pytest.raises(ConfigError, match="gives no layer groups"):
        FreezeLayers().freeze_before_training(model)


def fit(tmp_path, epochs, callback, experiment="freeze", ckpt_path=None):
    files = tiny_intent_files(tmp_path / "data")
    args = ["--model", "cs_lightning.models.IntentClassifier", "--model.backbone=bert", "--model.pretrained=false",
            "--model.model_size=tiny", "--model.learning_rate=0.01", "--model.warmup_ratio=0.0",
            "--model.weight_decay=0.01", "--data", "cs_lightning.data.IntentDataModule",
            f"--data.train_file={files['train']}", f"--data.val_file={files['val']}", "--data.batch_size=4",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
            f"--trainer.max_epochs={epochs}", f"--experiment={experiment}"]
    cli = CSLightningCLI(args=args, run=False, trainer_defaults={"callbacks": [callback]})
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
    return cli


def test_gradual_unfreezing_adds_groups_with_decayed_lr(tmp_path):
    callback = GradualUnfreezing(unfreeze_every=1, lr_decay=0.5)
    cli = fit(tmp_path, 3, callback)
    groups = cli.trainer.optimizers[0].param_groups
    # head (2 groups), then epoch 1: top block, epoch 2: next block, each with and without weight decay
    assert len(groups) == 2 + 2 * 2
    assert [g["initial_lr"] for g in groups] == pytest.approx([0.01, 0.01, 0.005, 0.005, 0.0025, 0.0025])
    assert [g["weight_decay"] for g in groups[2:4]] == [0.01, 0.0]
    assert callback.unfrozen == 2
    embeddings = cli.model.model.bert.embeddings
    assert not any(p.requires_grad for p in embeddings.parameters()) and not embeddings.training
    layers = cli.model.model.bert.encoder.layer
    assert layers[1].training and layers[0].training  # unfrozen blocks train with dropout again
    assert [g.name for g in callback.frozen] == ["embeddings"]
    # every group follows the same decay schedule
    ratios = [g["lr"] / g["initial_lr"] for g in groups]
    assert max(ratios) - min(ratios) < 1e-9


def test_gradual_unfreezing_resumes_with_the_same_groups_and_rates(tmp_path):
    straight = fit(tmp_path, 3, GradualUnfreezing(unfreeze_every=1, lr_decay=0.5), "straight")
    fit(tmp_path, 2, GradualUnfreezing(unfreeze_every=1, lr_decay=0.5), "resumed")
    resumed_callback = GradualUnfreezing(unfreeze_every=1, lr_decay=0.5)
    resumed = fit(tmp_path, 3, resumed_callback, "resumed", ckpt_path="last")
    a, b = straight.trainer.optimizers[0].param_groups, resumed.trainer.optimizers[0].param_groups
    assert len(a) == len(b) and resumed_callback.unfrozen == 2
    assert [g["lr"] for g in a] == pytest.approx([g["lr"] for g in b])
    assert trainable_names(straight.model) == trainable_names(resumed.model)


def test_unfreezing_schedule_past_max_epochs_warns(tmp_path):
    with pytest.warns(UserWarning, match="lowest groups stay frozen"):
        fit(tmp_path, 1, GradualUnfreezing(unfreeze_every=2))
