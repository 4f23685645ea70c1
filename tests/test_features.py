"""The embedding cache: keyed by CLIP, data and template; a hit never builds the CLIP; atomic writes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from mmadapter.data.embeddings import ClipProvider, EmbeddingCache, image_embeddings, labels_of, text_embeddings
from mmadapter.data.fewshot import image_folder_dataset
from mmadapter.errors import DataError
from tests.helpers import make_image_folder, tiny_clip_spec


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory):
    return tiny_clip_spec(tmp_path_factory.mktemp("clip"))


@pytest.fixture
def records(tmp_path: Path):
    return image_folder_dataset(make_image_folder(tmp_path / "ds", ["a", "b"], per_class=3)).train


def test_image_embeddings_are_unit_norm_and_ordered(spec, records) -> None:
    provider = ClipProvider(spec)
    emb = image_embeddings(provider, records, None, batch_size=4, progress=False)
    assert emb.shape == (6, 512)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(6))
    # batching does not change the result: same embedding as encoding one image alone
    alone = image_embeddings(provider, records[4:5], None, progress=False)
    torch.testing.assert_close(emb[4:5], alone, atol=1e-5, rtol=1e-5)
    assert labels_of(records).tolist() == [0, 0, 0, 1, 1, 1]


def test_cache_hit_skips_the_clip(spec, records, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = ClipProvider(spec)
    emb = image_embeddings(first, records, cache, progress=False)
    text = text_embeddings(first, ["a", "b"], ["a photo of a {}."], cache)
    assert first.loads == 1
    second = ClipProvider(spec)
    torch.testing.assert_close(image_embeddings(second, records, cache, progress=False), emb)
    torch.testing.assert_close(text_embeddings(second, ["a", "b"], ["a photo of a {}."], cache), text)
    assert second.loads == 0
    assert not [p for p in cache.iterdir() if "partial" in p.name]


def test_cache_key_changes_with_data_template_and_weights(spec, records, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    provider = ClipProvider(spec)
    image_embeddings(provider, records, cache, progress=False)
    text_embeddings(provider, ["a", "b"], ["a photo of a {}."], cache)
    n_files = len(list(cache.iterdir()))
    Image.new("RGB", (32, 32), (255, 0, 0)).save(records[0].path)  # the image changed: a miss
    image_embeddings(provider, records, cache, progress=False)
    text_embeddings(provider, ["a", "b"], ["{} texture."], cache)  # another template: a miss
    assert len(list(cache.iterdir())) == n_files + 2
    other = ClipProvider(type(spec)(spec.model_name, "some-tag"))
    assert EmbeddingCache.key({"clip": other.identity()}) != EmbeddingCache.key({"clip": provider.identity()})


def test_corrupt_cache_entry_is_recomputed(spec, records, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    provider = ClipProvider(spec)
    emb = image_embeddings(provider, records, cache, progress=False)
    (entry,) = list(cache.iterdir())
    entry.write_bytes(entry.read_bytes()[:50])
    again = ClipProvider(spec)
    torch.testing.assert_close(image_embeddings(again, records, cache, progress=False), emb)
    assert again.loads == 1


def test_corrupt_image_is_a_data_error_and_nothing_is_cached(spec, records, tmp_path: Path) -> None:
    records[2].path.write_bytes(b"garbage")
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="cannot read image"):
        image_embeddings(ClipProvider(spec), records, cache, progress=False)
    assert not cache.exists() or not list(cache.iterdir())
