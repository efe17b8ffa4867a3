import pytest

from cs_lightning.backbones import Backbone
from cs_lightning.errors import ConfigError
from cs_lightning.registry import get_backbone, installed_backbones


def test_builtin_backbones_are_entry_points():
    found = {p.name: p for p in installed_backbones()}
    assert {"bert", "gpt", "t5"} <= set(found)
    assert found["bert"].package == "cs-lightning"
    assert found["gpt"].target == "cs_lightning.backbones.gpt:GPTBackbone"


@pytest.mark.parametrize("name", ["bert", "gpt", "t5"])
def test_get_backbone_returns_checked_plugin(name):
    backbone = get_backbone(name)
    assert isinstance(backbone, Backbone)
    assert backbone.name == name
    assert "intent" in backbone.supported_tasks
    assert set(backbone.sizes) >= {"tiny", "small", "base"}


def test_unknown_backbone_lists_installed_plugins_and_packages():
    with pytest.raises(ConfigError) as err:
        get_backbone("roberta-large-xx")
    message = str(err.value)
    assert message.startswith("model.backbone: unknown backbone 'roberta-large-xx'")
    assert "bert (cs-lightning" in message and "gpt (cs-lightning" in message and "t5 (cs-lightning" in message
    assert "\n" not in message


def test_plugin_that_is_not_a_backbone_is_refused(monkeypatch):
    from importlib.metadata import EntryPoint

    import cs_lightning.registry as registry

    fake = EntryPoint(name="broken", value="collections:OrderedDict", group=registry.GROUP)
    monkeypatch.setattr(registry, "_entry_points", lambda: [fake])
    registry.backbone_class.cache_clear()
    try:
        with pytest.raises(ConfigError, match="not a cs_lightning Backbone subclass"):
            registry.get_backbone("broken")
    finally:
        registry.backbone_class.cache_clear()


def test_plugins_are_never_changed_by_a_run_that_trusts_remote_code(tmp_path, monkeypatch):
    """A model built with remote code trusted, then one without, in the same process: the second does not trust."""
    import transformers

    from cs_lightning.models import IntentClassifier
    from cs_lightning.tokenization import train_tokenizer

    tokenizer = str(train_tokenizer(["where is my parcel", "refund please", "cannot log in"] * 5, "wordpiece", 100))
    asked: list[tuple[str, bool]] = []
    for name in ("AutoTokenizer", "AutoModelForSequenceClassification"):
        auto = getattr(transformers, name)
        method = "from_pretrained" if name == "AutoTokenizer" else "from_config"
        real = getattr(auto, method)

        def spy(*args, _real=real, _name=name, **kwargs):
            asked.append((_name, kwargs.get("trust_remote_code")))
            return _real(*args, **kwargs)

        monkeypatch.setattr(auto, method, spy)
    for trust in (True, False):
        IntentClassifier(backbone="bert", pretrained=False, model_size="tiny", labels=["a", "b"],
                         tokenizer_path=tokenizer, trust_remote_code=trust)
    assert asked == [("AutoTokenizer", True), ("AutoModelForSequenceClassification", True),
                     ("AutoTokenizer", False), ("AutoModelForSequenceClassification", False)]
    first, second = get_backbone("bert"), get_backbone("bert")
    assert first is not second and not hasattr(first, "trust_remote_code")
