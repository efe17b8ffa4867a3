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
    registry.get_backbone.cache_clear()
    try:
        with pytest.raises(ConfigError, match="not a cs_lightning Backbone subclass"):
            registry.get_backbone("broken")
    finally:
        registry.get_backbone.cache_clear()
