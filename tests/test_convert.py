"""Adapters in the authors' layout (dqmis/clip-mma) converted to checkpoints of ours.

The authors' side is a module written here the way their code computes it: ``downsampler``, ``mha``
(the real ``torch.nn.MultiheadAttention``, sequence first) and ``upsampler`` over the N class texts
followed by the image, under their mask repeated per (image, head), then the 0.2 residual blends and
``logit_scale.exp()``. The converted checkpoint, loaded with ``load_checkpoint``, must give the same
logits through our fast path.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from mmadapter import cli
from mmadapter.errors import CheckpointError
from mmadapter.files import sha256_file
from mmadapter.model.authors_checkpoint import (
    AUTHORS_TO_OURS,
    convert_authors_state_dict,
    map_authors_state_dict,
    read_state_dict,
)
from mmadapter.model.checkpoint import load_checkpoint, read_metadata

TINY_CLIP = "mmadapter-tiny"  # open_clip config registered by mmadapter; embedding width 512
WIDTH = 512
CLASSES = ["ant", "bee", "cat", "dog", "eel", "fox", "gnu"]
# fp32: the literal [B, N+1] attention and our fast path sum in different orders; on logits of size
# <= logit scale (here 50) their rounding differs by ~1e-5, so 1e-4 absolute is a bound, not a fit.
LOGIT_ATOL_FP32 = 1e-4
# fp64: the fast path is an exact rewrite, so only float64 rounding (~1e-14 relative) separates them.
LOGIT_ATOL_FP64 = 1e-9


class AuthorsAdapter(nn.Module):
    """The authors' adapter module (linear down/up-sampling variant), sequence-first as theirs."""

    def __init__(self, embed_dim: int, num_heads: int = 4) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.downsampler = nn.Linear(embed_dim, embed_dim // 4)
        self.mha = nn.MultiheadAttention(embed_dim // 4, num_heads=num_heads)
        self.upsampler = nn.Linear(embed_dim // 4, embed_dim)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """inputs [N + 1, B, C]: the N class texts, then the image."""
        total, batch = inputs.shape[0], inputs.shape[1]
        prompts = total - 1
        mask = torch.full((total, total), float("-inf"), dtype=inputs.dtype)
        mask[:prompts, prompts:] = 0  # a text sees the image only
        mask[prompts:, :prompts] = 0  # the image sees the texts only
        mask = mask.unsqueeze(0).repeat(batch * self.num_heads, 1, 1)
        x = self.downsampler(inputs)
        x, _ = self.mha(x, x, x, attn_mask=mask)
        return self.upsampler(x)


class AuthorsModel(nn.Module):
    """Their CLIP wrapper, reduced to what its state dict and forward need: the CLIP's weights (a
    stand-in under ``_clip``, aliased as ``image_encoder``), the log-space logit scale, the adapter."""

    def __init__(self, embed_dim: int, logit_scale: float) -> None:
        super().__init__()
        self._clip = nn.Module()
        self._clip.visual = nn.Sequential(nn.Linear(16, 16), nn.LayerNorm(16))
        self._clip.logit_scale = nn.Parameter(torch.tensor(math.log(logit_scale)))
        self.image_encoder = self._clip.visual
        self.logit_scale = self._clip.logit_scale
        self.adapter = AuthorsAdapter(embed_dim)

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """Unit-norm CLIP features image [B, C], text [N, C] -> logits [B, N], as their forward."""
        n = text_features.shape[0]
        text = text_features.unsqueeze(1).expand(-1, image_features.shape[0], -1)  # [N, B, C]
        image = image_features.unsqueeze(0)  # [1, B, C]
        out = self.adapter(torch.cat([text, image], dim=0))
        adapted_image = F.normalize(out[n:], dim=-1)
        adapted_text = F.normalize(out[:n], dim=-1)
        image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
        image = F.normalize(0.2 * adapted_image + 0.8 * image, dim=-1)
        text = F.normalize(0.2 * adapted_text + 0.8 * text, dim=-1)
        scale = self.logit_scale.exp()
        return scale * torch.bmm(image.permute(1, 0, 2), text.permute(1, 2, 0)).squeeze(1)


def _authors_model(width: int = WIDTH, logit_scale: float = 50.0, seed: int = 0) -> AuthorsModel:
    torch.manual_seed(seed)
    model = AuthorsModel(width, logit_scale).eval()
    with torch.no_grad():  # biases away from nn's zero init, so that a swapped bias would show
        for p in model.adapter.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _features(dtype: torch.dtype = torch.float32, batch: int = 5, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm in ``dtype`` itself: the authors feed CLIP's normalised features to the adapter as they
    are, we normalise again, so inputs off unit norm by fp32 rounding would differ at fp64 precision."""
    g = torch.Generator().manual_seed(seed)
    images = F.normalize(torch.randn(batch, WIDTH, generator=g, dtype=torch.float64), dim=-1).to(dtype)
    texts = F.normalize(torch.randn(len(CLASSES), WIDTH, generator=g, dtype=torch.float64), dim=-1).to(dtype)
    return F.normalize(images, dim=-1), F.normalize(texts, dim=-1)


def _bare_adapter_state(model: AuthorsModel) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.adapter.state_dict().items()}


def _convert(source, out: Path, **kwargs) -> Path:
    return convert_authors_state_dict(source, clip_model=TINY_CLIP, pretrained=None, class_names=CLASSES,
                                      out=out, **kwargs)


def _check_same_logits(model: AuthorsModel, checkpoint: Path) -> None:
    adapter, meta = load_checkpoint(checkpoint, backend="torch")
    images, texts = _features()
    images64, texts64 = _features(torch.float64)
    with torch.no_grad():
        theirs = model(images, texts)
        ours = adapter(images, texts, meta.logit_scale).logits
        theirs64 = model.double()(images64, texts64)
        ours64 = adapter.double()(images64, texts64, meta.logit_scale).logits
    model.float()
    assert (ours - theirs).abs().max().item() <= LOGIT_ATOL_FP32
    assert (ours64 - theirs64).abs().max().item() <= LOGIT_ATOL_FP64
    # The check has teeth: the adapter moves the logits away from plain CLIP's by far more than that.
    assert (theirs - meta.logit_scale * images @ texts.T).abs().max().item() > 100 * LOGIT_ATOL_FP32


def test_authors_training_file_converts_with_equal_logits(tmp_path: Path) -> None:
    model = _authors_model(logit_scale=50.0)
    state = model.state_dict()
    source = tmp_path / "model_best.pth.tar"
    # Their training script's file: the whole model's state dict with the epoch and the optimizer.
    torch.save({"epoch": 3, "state_dict": state, "best_acc1": 81.5,
                "optimizer": torch.optim.Adam(model.adapter.parameters()).state_dict()}, source)
    out = _convert(source, tmp_path / "converted.safetensors")

    _check_same_logits(model, out)
    meta = read_metadata(out)
    assert meta["logit_scale"] == pytest.approx(50.0, rel=1e-6)  # exp of the saved ln(50), fp32-rounded
    assert meta["training"]["logit_scale_from"] == "source"
    assert meta["training"]["source_prefix"] == "adapter."
    assert meta["training"]["ignored_entries"] == len(state) - len(AUTHORS_TO_OURS)
    assert meta["training"]["source_sha256"] == sha256_file(source)
    assert meta["label_set"]["class_names"] == CLASSES
    assert meta["clip"] == {"model_name": TINY_CLIP, "pretrained": None, "weights_path": None, "weights_sha256": None}


def test_bare_adapter_safetensors_without_prefix(tmp_path: Path) -> None:
    model = _authors_model(logit_scale=100.0, seed=3)
    source = tmp_path / "adapter.safetensors"
    save_file(_bare_adapter_state(model), str(source))
    # Their forward takes exp of the fp32 ln(100) it holds; given as that value, fp64 logits can agree.
    out = _convert(source, tmp_path / "converted.safetensors", logit_scale=math.exp(model.logit_scale.item()))

    _check_same_logits(model, out)
    meta = read_metadata(out)
    assert meta["training"]["source_prefix"] == "" and meta["training"]["ignored_entries"] == 0
    assert meta["training"]["logit_scale_from"] == "argument"


@pytest.mark.parametrize("prefix", ["adapter.", "", "module.adapter."])
def test_mapping_renames_every_tensor_at_a_small_width(prefix: str) -> None:
    model = _authors_model(width=64)
    state = {prefix + k: v for k, v in _bare_adapter_state(model).items()}
    state["_clip.visual.0.weight"] = torch.zeros(16, 16)  # an entry of the CLIP: ignored, counted
    found = map_authors_state_dict(state)
    assert found.prefix == prefix and found.ignored == 1
    assert found.config.embed_dim == 64 and found.config.bottleneck_dim == 16 and found.config.num_heads == 4
    for theirs, ours in AUTHORS_TO_OURS.items():
        assert torch.equal(found.tensors[ours], state[prefix + theirs])  # a rename, bit for bit
    # A log-space logit scale is read only beside an "adapter." module, as the authors' model holds it.
    assert found.logit_scale is None


def test_logit_scale_from_the_clip_and_weights_recorded_by_sha256(tmp_path: Path) -> None:
    from tests.helpers import tiny_clip_spec

    spec = tiny_clip_spec(tmp_path)
    model = _authors_model(seed=5)
    out = convert_authors_state_dict(_bare_adapter_state(model), clip_model=TINY_CLIP,
                                     clip_weights=spec.weights_path, class_names=CLASSES, templates=["a {}."],
                                     out=tmp_path / "c.safetensors")
    adapter, meta = load_checkpoint(out, backend="torch")
    assert meta.clip.weights_sha256 == sha256_file(spec.weights_path)
    assert meta.clip.weights_path == spec.weights_path and meta.clip.pretrained is None
    assert meta.label_set.templates == ("a {}.",)
    # open_clip initialises the logit scale to ln(1/0.07); the tiny CLIP's file keeps that value.
    assert meta.logit_scale == pytest.approx(1 / 0.07, rel=1e-6)
    assert read_metadata(out)["training"]["logit_scale_from"] == "clip"


def test_existing_output_is_refused_without_overwrite(tmp_path: Path) -> None:
    state = _bare_adapter_state(_authors_model())
    out = _convert(state, tmp_path / "c.safetensors", logit_scale=100.0)
    before = out.read_bytes()
    with pytest.raises(Exception, match="exists"):
        _convert(state, out, logit_scale=50.0)
    assert out.read_bytes() == before
    _convert(state, out, logit_scale=50.0, overwrite=True)
    assert read_metadata(out)["logit_scale"] == 50.0


# -- bad inputs: each one line, naming what is wrong ---------------------------------------------------------


def _one_line_error(state_or_path, match: str, tmp_path: Path) -> str:
    with pytest.raises(CheckpointError, match=match) as info:
        _convert(state_or_path, tmp_path / "never.safetensors", logit_scale=100.0)
    message = str(info.value)
    assert "\n" not in message
    assert not (tmp_path / "never.safetensors").exists()
    return message


def test_wrong_shape_names_key_and_shapes(tmp_path: Path) -> None:
    state = {"adapter." + k: v for k, v in _bare_adapter_state(_authors_model()).items()}
    state["adapter.upsampler.bias"] = torch.zeros(WIDTH + 1)
    message = _one_line_error(state, "upsampler.bias", tmp_path)
    assert f"[{WIDTH + 1}]" in message and f"[{WIDTH}]" in message


def test_bottleneck_other_than_a_quarter_is_refused(tmp_path: Path) -> None:
    state = _bare_adapter_state(_authors_model())
    state["downsampler.weight"] = torch.zeros(WIDTH // 2, WIDTH)
    message = _one_line_error(state, "downsampler.weight", tmp_path)
    assert f"[{WIDTH // 2}, {WIDTH}]" in message and f"[{WIDTH // 4}, {WIDTH}]" in message


def test_width_other_than_the_clips_is_refused(tmp_path: Path) -> None:
    message = _one_line_error(_bare_adapter_state(_authors_model(width=64)), "width 64", tmp_path)
    assert TINY_CLIP in message and "512" in message


@pytest.mark.parametrize("key", ["mha.in_proj_bias", "downsampler.weight"])
def test_missing_key(tmp_path: Path, key: str) -> None:
    state = {"adapter." + k: v for k, v in _bare_adapter_state(_authors_model()).items()}
    del state["adapter." + key]
    _one_line_error(state, "downsampler.weight" if key == "downsampler.weight" else f"adapter.{key}", tmp_path)


def test_ambiguous_and_foreign_layouts(tmp_path: Path) -> None:
    bare = _bare_adapter_state(_authors_model())
    both = {**bare, **{"adapter." + k: v for k, v in bare.items()}}
    _one_line_error(both, "ambiguous", tmp_path)
    sequential = {"adapter.downsampler.0.weight": torch.zeros(32, WIDTH), "adapter.downsampler.1.weight":
                  torch.zeros(128, 32)}
    _one_line_error(sequential, "MLP bottleneck", tmp_path)
    _one_line_error({**bare, "mha.bias_k": torch.zeros(1, 1, WIDTH // 4)}, "mha.bias_k", tmp_path)
    _one_line_error({**bare, "mha.in_proj_bias": torch.zeros(3 * WIDTH // 4, dtype=torch.int64)}, "dtype", tmp_path)
    _one_line_error({**bare, "upsampler.weight": torch.full((WIDTH, WIDTH // 4), math.nan)}, "NaN", tmp_path)
    _one_line_error({**bare, "mha.out_proj.bias": [0.0] * (WIDTH // 4)}, "not a tensor", tmp_path)


class _Arbitrary:
    """Stands for any pickled object: loading it would run code of the file's choosing."""


def test_pickle_with_objects_is_refused_without_unpickling_them(tmp_path: Path) -> None:
    source = tmp_path / "evil.pt"
    torch.save({"state_dict": _bare_adapter_state(_authors_model()), "extra": _Arbitrary()}, source)
    message = _one_line_error(source, "weights_only=True", tmp_path)
    assert "_Arbitrary" in message


def test_truncated_and_foreign_files(tmp_path: Path) -> None:
    state = _bare_adapter_state(_authors_model())
    torch_file, st_file = tmp_path / "a.pt", tmp_path / "a.safetensors"
    torch.save(state, torch_file)
    save_file(state, str(st_file))
    for path in (torch_file, st_file):
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        _one_line_error(path, str(path), tmp_path)
    text = tmp_path / "notes.txt"
    text.write_text("not weights at all")
    _one_line_error(text, "neither a torch file nor", tmp_path)
    _one_line_error(tmp_path / "absent.pt", "not found", tmp_path)
    listed = tmp_path / "list.pt"
    torch.save([torch.zeros(3)], listed)
    _one_line_error(listed, "not a state dict", tmp_path)


def test_read_state_dict_unwraps_the_training_file(tmp_path: Path) -> None:
    state = _bare_adapter_state(_authors_model(width=64))
    source = tmp_path / "best.pth"
    torch.save({"epoch": 1, "state_dict": state}, source)
    loaded = read_state_dict(source)
    assert sorted(loaded) == sorted(state) and all(torch.equal(loaded[k], state[k]) for k in state)


# -- the subcommand under the CLI's error contract ---------------------------------------------------------


def test_cmd_convert(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = _authors_model(seed=7)
    source = tmp_path / "model_best.pth.tar"
    torch.save({"state_dict": model.state_dict()}, source)
    out = tmp_path / "c.safetensors"
    argv = [str(source), "--out", str(out), "--classes", ",".join(CLASSES), "--clip-model", TINY_CLIP,
            "--pretrained", "", "--template", "a photo of a {}."]
    assert cli.main(["convert", *argv]) == 0
    printed = capsys.readouterr().out
    assert "'adapter.'" in printed and f"ignored {len(model.state_dict()) - 8} other entries" in printed
    _check_same_logits(model, out)

    assert cli.main(["convert", *argv]) == 2  # exists, no --overwrite
    assert "exists" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(source.read_bytes()[:100])
    assert cli.main(["convert", str(bad), "--out", str(tmp_path / "d.safetensors"), "--classes", "a,b",
                           "--clip-model", TINY_CLIP]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and str(bad) in err
