"""Which adapter config a CLIP width gets: the registered one where a file names that width, else the
paper's defaults at that width."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmadapter.model import config
from mmadapter.model.config import AdapterConfig, adapter_config_for_width, get_adapter_config


@pytest.mark.parametrize("name,width", [("mma-vit-b", 512), ("mma-vit-l", 768), ("mma-vit-h", 1024)])
def test_registered_width_gives_its_registered_config(name: str, width: int) -> None:
    assert adapter_config_for_width(width) == get_adapter_config(name)


def test_unregistered_width_falls_back_to_the_defaults() -> None:
    assert 384 not in {get_adapter_config(n).embed_dim for n in config.list_adapter_configs()}
    cfg = adapter_config_for_width(384)
    assert cfg == AdapterConfig(embed_dim=384)
    assert (cfg.reduction, cfg.num_heads, cfg.blend, cfg.bottleneck_dim) == (4, 4, 0.2, 96)


def test_registered_config_wins_over_the_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped configs equal the defaults at their widths, so only a registry whose config differs
    from the defaults tells "looked up" from "fell back"."""
    (tmp_path / "mma-test-384.json").write_text(json.dumps({"embed_dim": 384, "reduction": 8, "blend": 0.5}))
    monkeypatch.setattr(config, "ADAPTER_CONFIG_DIR", tmp_path)
    assert adapter_config_for_width(384) == AdapterConfig(embed_dim=384, reduction=8, blend=0.5)
    assert adapter_config_for_width(512) == AdapterConfig(embed_dim=512)  # not in this registry: defaults
