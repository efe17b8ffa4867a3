"""The plugin honours cs-lightning's backbone contract (run with the plugin installed)."""

from cs_lightning.testing import check_backbone


def test_distilbert_plugin_honours_the_contract(tmp_path):
    summary = check_backbone("distilbert", tmp_cache=str(tmp_path))
    assert summary["intent"]["layer_groups"] == 3  # embeddings + 2 tiny blocks
