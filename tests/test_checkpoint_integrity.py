"""No silent wrong answer from checkpoints, CLIP weights, training or the embedding cache: every
corrupt, edited, mistyped or unwritable case is one line of an MMAdapterError (or one warning line
for the cache), and nothing is written that should not be."""

from __future__ import annotations

import json
import os
import pickle
import struct
from pathlib import Path
from typing import Any

import pytest
import safetensors
import safetensors.torch
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mmadapter import AdapterConfig, CheckpointError, ClipSpec, ConfigError, MultiModalAdapter
from mmadapter.data.embeddings import ClipProvider, EmbeddingCache, image_embeddings, text_embeddings
from mmadapter.data.fewshot import image_folder_dataset
from mmadapter.errors import DataError, MMAdapterError
from mmadapter.files import FileWriteError, sha256_file
from mmadapter.model.backbone import load_clip, save_clip_weights
from mmadapter.model.checkpoint import (
    HASH_KEY,
    METADATA_KEY,
    CheckpointMeta,
    LabelSet,
    check_output_file,
    content_sha256,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
)
from mmadapter.model.config import TrainConfig
from mmadapter.training.train import EmbeddedSplit, train_head
from mmadapter.training.workflow import open_dataset, train_checkpoint
from tests.helpers import make_image_folder, synthetic_embeddings, tiny_clip_spec

SMALL = AdapterConfig(embed_dim=32)


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert message and "\n" not in message, f"error message is not one line: {message!r}"
    return message


def make_meta(config: AdapterConfig = SMALL, **changes: Any) -> CheckpointMeta:
    fields = dict(adapter=config, clip=ClipSpec("ViT-B-16", "openai"), logit_scale=100.0,
                  label_set=LabelSet(("cat", "dog", "fish"), ("a photo of a {}.",)), training={"lr": 0.01},
                  metrics={"hm": 0.5})
    return CheckpointMeta(**{**fields, **changes})


def make_adapter(config: AdapterConfig = SMALL, seed: int = 0) -> MultiModalAdapter:
    adapter = MultiModalAdapter(config, backend="torch")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return adapter


@pytest.fixture()
def saved(tmp_path: Path) -> Path:
    return save_checkpoint(tmp_path / "adapter.safetensors", make_adapter(), make_meta())


def header_of(path: Path) -> dict[str, Any]:
    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()[METADATA_KEY])


def rewrite(path: Path, out: Path, data: dict[str, Any], tensors: dict[str, torch.Tensor] | None = None,
            rehash: bool = True) -> Path:
    """``path``'s tensors (or ``tensors``) with the description ``data``; ``rehash`` records a correct
    content sha256 for it, so that the check under test is the one that has to catch the problem."""
    tensors = load_file(str(path)) if tensors is None else tensors
    if rehash:
        data = {**data, HASH_KEY: content_sha256(tensors, data)}
    save_file(tensors, str(out), metadata={METADATA_KEY: json.dumps(data)})
    return out


# -- content hash ----------------------------------------------------------------------------------------


def test_round_trip_records_a_content_hash(saved: Path) -> None:
    adapter, meta = load_checkpoint(saved)
    assert meta == make_meta()
    data = header_of(saved)
    assert data[HASH_KEY] == content_sha256(load_file(str(saved)), data) and len(data[HASH_KEY]) == 64
    for name, tensor in make_adapter().state_dict().items():
        assert torch.equal(adapter.state_dict()[name], tensor), f"{name} changed in the round trip"


def test_bit_flip_in_a_finite_weight_is_refused(saved: Path, tmp_path: Path) -> None:
    raw = bytearray(saved.read_bytes())
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    start = 8 + header_len + header["down.weight"]["data_offsets"][0]
    raw[start] ^= 0x01  # lowest mantissa bit of the first float32 (little-endian): still finite
    flipped = tmp_path / "flipped.safetensors"
    flipped.write_bytes(bytes(raw))
    value = load_file(str(flipped))["down.weight"].flatten()[0]
    assert torch.isfinite(value) and value != make_adapter().state_dict()["down.weight"].flatten()[0]
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(flipped)
    assert "does not match the sha256 recorded at save: corrupt or modified" in one_line(exc)


def test_reordered_class_list_is_refused(saved: Path, tmp_path: Path) -> None:
    data = header_of(saved)
    data["label_set"]["class_names"] = list(reversed(data["label_set"]["class_names"]))
    edited = rewrite(saved, tmp_path / "reordered.safetensors", data, rehash=False)  # the old hash kept
    read_metadata(edited)  # the header alone is well formed ...
    with pytest.raises(CheckpointError) as exc:  # ... but not what was saved
        load_checkpoint(edited)
    assert "does not match the sha256" in one_line(exc)


def test_missing_content_hash_is_refused(saved: Path, tmp_path: Path) -> None:
    data = header_of(saved)
    del data[HASH_KEY]
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(rewrite(saved, tmp_path / "nohash.safetensors", data, rehash=False))
    assert "no content sha256" in one_line(exc)


def test_version_1_file_is_a_clear_error(saved: Path, tmp_path: Path) -> None:
    data = {**header_of(saved), "format_version": 1}
    data.pop(HASH_KEY)
    with pytest.raises(CheckpointError) as exc:
        read_metadata(rewrite(saved, tmp_path / "v1.safetensors", data, rehash=False))
    assert "format version 1" in one_line(exc) and "reads version 2" in one_line(exc)


# -- tensors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bool, torch.int32, torch.int64, torch.uint8])
def test_non_floating_tensor_is_refused(saved: Path, tmp_path: Path, dtype: torch.dtype) -> None:
    tensors = load_file(str(saved))
    tensors["up.bias"] = torch.ones_like(tensors["up.bias"]).to(dtype)
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(rewrite(saved, tmp_path / "int.safetensors", header_of(saved), tensors))
    message = one_line(exc)
    assert "up.bias" in message and str(dtype).removeprefix("torch.") in message


def test_half_precision_tensors_load_as_float32(saved: Path, tmp_path: Path) -> None:
    tensors = {k: v.half() for k, v in load_file(str(saved)).items()}
    adapter, _ = load_checkpoint(rewrite(saved, tmp_path / "half.safetensors", header_of(saved), tensors))
    reference = make_adapter().state_dict()["down.weight"]
    # reference: the float32 weights; tolerance: fp16 rounding of values of magnitude < 1 (2^-11 relative)
    torch.testing.assert_close(adapter.state_dict()["down.weight"], reference, rtol=1e-3, atol=1e-3)
    assert adapter.state_dict()["down.weight"].dtype == torch.float32


def test_non_finite_weights_are_refused_at_save(tmp_path: Path) -> None:
    adapter = make_adapter()
    with torch.no_grad():
        adapter.up.weight[3, 1] = float("inf")
    with pytest.raises(CheckpointError) as exc:
        save_checkpoint(tmp_path / "bad.safetensors", adapter, make_meta())
    assert "up.weight" in one_line(exc) and "NaN or infinite" in one_line(exc)
    assert list(tmp_path.iterdir()) == [], "a file was written"


# -- metadata types --------------------------------------------------------------------------------------


def _set(path: tuple, value: Any):
    def edit(data: dict[str, Any]) -> None:
        target = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return edit


def _delete(*path: str):
    def edit(data: dict[str, Any]) -> None:
        target = data
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
    return edit


BAD_METADATA = {
    "logit scale negative": (_set(("logit_scale",), -1.0), "logit_scale"),
    "logit scale zero": (_set(("logit_scale",), 0), "logit_scale"),
    "logit scale nan": (_set(("logit_scale",), float("nan")), "logit_scale"),
    "logit scale inf": (_set(("logit_scale",), float("inf")), "logit_scale"),
    "logit scale true": (_set(("logit_scale",), True), "logit_scale"),
    "logit scale string": (_set(("logit_scale",), "100"), "logit_scale"),
    "width 512.0": (_set(("adapter", "embed_dim"), 32.0), "embed_dim"),
    "width true": (_set(("adapter", "embed_dim"), True), "embed_dim"),
    "blend string": (_set(("adapter", "blend"), "0.2"), "blend"),
    "numbers as class names": (_set(("label_set", "class_names"), [1, 2, 3]), "class names are strings"),
    "class names a string": (_set(("label_set", "class_names"), "cat,dog"), "class_names"),
    "duplicate class names": (_set(("label_set", "class_names"), ["a b", "a_b"]), "same prompt"),
    "template not a string": (_set(("label_set", "templates"), [7]), "template"),
    "template two fields": (_set(("label_set", "templates"), ["a {} of {}"]), "exactly one"),
    "list as adapter": (_set(("adapter",), [32, 4, 4, 0.2]), "adapter"),
    "list as clip": (_set(("clip",), ["ViT-B-16"]), "clip"),
    "list as label set": (_set(("label_set",), ["cat", "dog"]), "label_set"),
    "list as training": (_set(("training",), [0.01]), "training"),
    "string as metrics": (_set(("metrics",), "good"), "metrics"),
    "number as model name": (_set(("clip", "model_name"), 16), "model_name"),
    "bad sha": (_set(("clip", "weights_sha256"), "abc"), "sha256"),
    "weights path without sha": (_set(("clip", "weights_path"), "clip.safetensors"), "no sha256"),
    "unknown top-level key": (_set(("surprise",), 1), "unknown keys"),
    "unknown adapter key": (_set(("adapter", "heads"), 4), "unknown keys"),
    "missing label set": (_delete("label_set"), "lacks"),
    "missing class names": (_delete("label_set", "class_names"), "class_names"),
    "missing model name": (_delete("clip", "model_name"), "CLIP spec"),
    "version 2.0": (_set(("format_version",), 2.0), "format version"),
    "version true": (_set(("format_version",), True), "format version"),
    "huge width": (_set(("adapter", "embed_dim"), 10**30), "shape"),
}


@pytest.mark.parametrize("case", sorted(BAD_METADATA))
def test_mistyped_metadata_is_one_line_error(saved: Path, tmp_path: Path, case: str) -> None:
    edit, expected = BAD_METADATA[case]
    data = header_of(saved)
    edit(data)
    path = rewrite(saved, tmp_path / "edited.safetensors", data)  # hash correct: the type check must catch it
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path)
    assert expected in one_line(exc) and str(path) in one_line(exc)


def test_meta_from_dict_never_raises_a_python_error() -> None:
    good = make_meta().to_dict()
    for value in (None, [], "x", 3, [good]):
        with pytest.raises(MMAdapterError):
            CheckpointMeta.from_dict(value)
    for key in ("adapter", "clip", "label_set", "training", "metrics"):
        for value in (None, [], "x", 3.5, True):
            with pytest.raises(MMAdapterError):
                CheckpointMeta.from_dict({**good, key: value})


@pytest.mark.parametrize("bad", [{"embed_dim": 512.0}, {"embed_dim": True}, {"reduction": "4"},
                                 {"blend": float("nan")}, {"num_heads": None}])
def test_adapter_config_from_dict_is_strict(bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as exc:
        AdapterConfig.from_dict({**AdapterConfig().to_dict(), **bad})
    assert list(bad)[0] in one_line(exc)


@pytest.mark.parametrize("bad", [{"lr": float("nan")}, {"lr": float("inf")}, {"lr": 0.0}, {"lr": -1e-3},
                                 {"lr": True}, {"lr": 1e7}, {"weight_decay": -1.0}, {"weight_decay": float("nan")},
                                 {"batch_size": 0}, {"batch_size": 2.0}, {"max_epochs": True}, {"patience": 0},
                                 {"shots": -1}, {"seed": -1}, {"seed": 2**32}, {"seed": 1.0}])
def test_train_config_is_checked(bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as exc:
        TrainConfig(**bad)
    assert one_line(exc)
    with pytest.raises(ConfigError):
        TrainConfig.from_dict(bad)


def test_train_config_accepts_the_edges() -> None:
    assert TrainConfig(seed=0).seed == 0 and TrainConfig(seed=2**32 - 1).seed == 2**32 - 1
    assert TrainConfig(lr=1).lr == 1.0 and isinstance(TrainConfig(lr=1).lr, float)
    assert TrainConfig.from_dict(TrainConfig().to_dict()) == TrainConfig()


@pytest.mark.parametrize("bad", [{"pretrained": 3}, {"weights_path": ["a"]}, {"model_name": ""},
                                 {"weights_sha256": "A" * 64}])
def test_clip_spec_from_dict_is_strict(bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as exc:
        ClipSpec.from_dict({"model_name": "ViT-B-16", **bad})
    assert one_line(exc)


def test_clip_weights_without_sha_are_refused() -> None:
    with pytest.raises(ConfigError) as exc:
        make_meta(clip=ClipSpec("ViT-B-16", None, "/models/clip.safetensors", None))
    assert "no sha256" in one_line(exc) and "/models/clip.safetensors" in one_line(exc)


# -- writing ---------------------------------------------------------------------------------------------


def test_existing_file_needs_overwrite(saved: Path) -> None:
    before = saved.read_bytes()
    with pytest.raises(FileWriteError) as exc:
        save_checkpoint(saved, make_adapter(seed=1), make_meta())
    assert "exists (use --overwrite to replace it)" in one_line(exc)
    assert saved.read_bytes() == before, "the existing checkpoint changed"
    with pytest.raises(FileWriteError):
        check_output_file(saved)
    save_checkpoint(saved, make_adapter(seed=1), make_meta(), overwrite=True)
    loaded, _ = load_checkpoint(saved)
    assert torch.equal(loaded.state_dict()["up.bias"], make_adapter(seed=1).state_dict()["up.bias"])
    assert sorted(p.name for p in saved.parent.iterdir()) == ["adapter.safetensors"], "temporaries left"


def test_read_only_existing_file_is_replaced_with_overwrite(saved: Path) -> None:
    saved.chmod(0o444)
    check_output_file(saved, overwrite=True)  # the folder is writable: allowed
    save_checkpoint(saved, make_adapter(seed=2), make_meta(), overwrite=True)
    loaded, _ = load_checkpoint(saved)
    assert torch.equal(loaded.state_dict()["down.bias"], make_adapter(seed=2).state_dict()["down.bias"])


def test_folder_as_destination_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileWriteError) as exc:
        check_output_file(tmp_path, overwrite=True)
    assert "is a folder" in one_line(exc)
    with pytest.raises(FileWriteError):
        save_checkpoint(tmp_path, make_adapter(), make_meta(), overwrite=True)


def test_file_where_the_folder_should_be(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    with pytest.raises(FileWriteError) as exc:
        check_output_file(blocker / "sub" / "adapter.safetensors")
    assert "is a file, not a folder" in one_line(exc)
    with pytest.raises(FileWriteError):
        save_checkpoint(blocker / "adapter.safetensors", make_adapter(), make_meta())
    assert blocker.read_text() == "not a folder"


def test_read_only_folder_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:  # root writes anywhere: then os.access is what says "not writable"
        folder.chmod(0o555)
    else:
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == folder else real_access(p, mode))
    try:
        with pytest.raises(FileWriteError) as exc:
            check_output_file(folder / "adapter.safetensors")
        assert "not writable" in one_line(exc) and str(folder) in one_line(exc)
    finally:
        folder.chmod(0o755)


def test_safetensors_error_on_write_is_a_file_write_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full_disk(*args: Any, **kwargs: Any) -> None:
        Path(args[1]).write_bytes(b"half")  # a partial temporary, as a real failure leaves one
        raise safetensors.SafetensorError("Error while serializing: IoError(No space left on device (os error 28))")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(FileWriteError) as exc:
        save_checkpoint(tmp_path / "adapter.safetensors", make_adapter(), make_meta())
    assert "No space left" in one_line(exc) and "adapter.safetensors" in one_line(exc)
    assert list(tmp_path.iterdir()) == [], "a partial file was left behind"


# -- training --------------------------------------------------------------------------------------------


def test_diverging_loss_stops_training(monkeypatch: pytest.MonkeyPatch) -> None:
    import mmadapter.training.train as train_module

    text, x, y = synthetic_embeddings(4, 8, 32)
    real = train_module.F.cross_entropy
    calls = {"n": 0}

    def nan_after_three(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] > 3 else loss

    monkeypatch.setattr(train_module.F, "cross_entropy", nan_after_three)
    head = MultiModalAdapter(SMALL, backend="torch")
    with pytest.raises(DataError) as exc:
        train_head(head, EmbeddedSplit(x, y), text, TrainConfig(lr=10.0, batch_size=16, max_epochs=5), progress=False)
    assert one_line(exc) == "training diverged: the loss became nan at epoch 2 (learning rate 10 is too high?)"


def test_nan_embeddings_are_refused_before_training() -> None:
    text, x, y = synthetic_embeddings(4, 8, 32)
    x[3, 5] = float("nan")
    with pytest.raises(DataError, match="training image embeddings contain NaN"):
        train_head(MultiModalAdapter(SMALL), EmbeddedSplit(x, y), text, progress=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("tiny")
    spec = tiny_clip_spec(root)
    data = make_image_folder(root / "data", ["ant", "bee", "cow", "dog"], per_class=6, size=32)
    return {"root": root, "spec": spec, "data": data}


def test_diverging_training_writes_no_checkpoint(tiny: dict[str, Any], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import mmadapter.training.train as train_module

    monkeypatch.setattr(train_module.F, "cross_entropy", lambda *a, **k: torch.tensor(float("inf"), requires_grad=True))
    out = tmp_path / "out" / "adapter.safetensors"
    with pytest.raises(DataError) as exc:
        train_checkpoint(open_dataset(tiny["data"]), ClipProvider(tiny["spec"]), out, TrainConfig(shots=2),
                         cache_dir=tmp_path / "cache", progress=False)
    assert "training diverged: the loss became inf at epoch 1" in one_line(exc)
    assert not out.exists() and (not out.parent.exists() or list(out.parent.iterdir()) == [])


def test_existing_out_is_refused_before_any_work(tiny: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "adapter.safetensors"
    out.write_bytes(b"precious")
    provider = ClipProvider(tiny["spec"])
    with pytest.raises(FileWriteError) as exc:
        train_checkpoint(open_dataset(tiny["data"]), provider, out, TrainConfig(shots=2),
                         cache_dir=tmp_path / "cache", progress=False)
    assert one_line(exc) == f"{out} exists (use --overwrite to replace it)"
    assert provider.loads == 0 and not (tmp_path / "cache").exists(), "work was done before the check"
    assert out.read_bytes() == b"precious"


def test_user_weights_are_pinned_by_sha_in_the_checkpoint(tiny: dict[str, Any], tmp_path: Path) -> None:
    weights = Path(tiny["spec"].weights_path)
    user_spec = ClipSpec("mmadapter-tiny", None, str(weights), None)  # as the CLI builds it from --clip-weights
    provider = ClipProvider(user_spec)
    assert provider.spec.weights_sha256 == sha256_file(weights)
    out = tmp_path / "adapter.safetensors"
    train_checkpoint(open_dataset(tiny["data"]), provider, out, TrainConfig(shots=2, max_epochs=2),
                     cache_dir=tmp_path / "cache", progress=False)
    _, meta = load_checkpoint(out)
    assert meta.clip.weights_sha256 == sha256_file(weights)
    # the weights file swapped for other weights of the same model: refused when the CLIP is built
    torch.manual_seed(123)
    other = tmp_path / "other.safetensors"
    save_clip_weights(load_clip(ClipSpec("mmadapter-tiny")), other)
    with pytest.raises(ConfigError) as exc:
        load_clip(ClipSpec(meta.clip.model_name, None, str(other), meta.clip.weights_sha256))
    assert "does not match the sha256" in one_line(exc)


# -- CLIP weights that do not fit ------------------------------------------------------------------------


def test_weights_missing_keys_do_not_fit(tiny: dict[str, Any], tmp_path: Path) -> None:
    state = load_file(tiny["spec"].weights_path)
    first = sorted(state)[0]
    del state[first]
    bad = tmp_path / "missing.safetensors"
    save_file(state, str(bad))
    with pytest.raises(ConfigError) as exc:
        load_clip(ClipSpec("mmadapter-tiny", None, str(bad), None))
    assert one_line(exc) == (f"CLIP weights {bad} do not fit open_clip model mmadapter-tiny: 1 missing keys, "
                             f"first {first!r}")


def test_weights_of_another_shape_do_not_fit(tiny: dict[str, Any], tmp_path: Path) -> None:
    state = load_file(tiny["spec"].weights_path)
    state["text_projection"] = torch.zeros(3, 3)
    state["extra.weight"] = torch.zeros(2)
    bad = tmp_path / "shapes.safetensors"
    save_file(state, str(bad))
    with pytest.raises(ConfigError) as exc:
        load_clip(ClipSpec("mmadapter-tiny", None, str(bad), None))
    message = one_line(exc)
    assert "1 unexpected keys, first 'extra.weight'" in message and "'text_projection' [3, 3]" in message


def test_tiny_weights_do_not_fit_vit_b_16(tiny: dict[str, Any]) -> None:
    weights = tiny["spec"].weights_path
    with pytest.raises(ConfigError) as exc:
        load_clip(ClipSpec("ViT-B-16", None, weights, None))
    assert one_line(exc).startswith(f"CLIP weights {weights} do not fit open_clip model ViT-B-16: ")


def test_non_finite_clip_weights_are_refused(tiny: dict[str, Any], tmp_path: Path) -> None:
    state = load_file(tiny["spec"].weights_path)
    state["text_projection"][0, 0] = float("nan")
    bad = tmp_path / "nan.safetensors"
    save_file(state, str(bad))
    with pytest.raises(ConfigError) as exc:
        load_clip(ClipSpec("mmadapter-tiny", None, str(bad), None))
    assert "text_projection has NaN" in one_line(exc)


def test_torch_pickle_weights_load_safely(tiny: dict[str, Any], tmp_path: Path) -> None:
    state = load_file(tiny["spec"].weights_path)
    good = tmp_path / "clip.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, good)
    clip = load_clip(ClipSpec("mmadapter-tiny", None, str(good), None))
    reference = load_clip(tiny["spec"])
    texts = ["a photo of a cat."]
    # reference: the same weights from the safetensors file; tolerance: identical arithmetic, exact
    torch.testing.assert_close(clip.encode_texts(texts), reference.encode_texts(texts), rtol=0, atol=0)

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump(Exploit(), f, protocol=2)
    with pytest.raises(ConfigError) as exc:
        load_clip(ClipSpec("mmadapter-tiny", None, str(evil), None))
    assert str(evil) in one_line(exc)
    assert not marker.exists(), "the pickle was executed"


# -- embedding cache -------------------------------------------------------------------------------------


def test_unwritable_cache_warns_once_and_goes_on(tiny: dict[str, Any], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "cache-is-a-file"
    blocker.write_text("x")
    records = image_folder_dataset(tiny["data"]).train
    provider = ClipProvider(tiny["spec"])
    emb = image_embeddings(provider, records, blocker, progress=False)
    text = text_embeddings(provider, ["ant", "bee"], ["a photo of a {}."], blocker)
    reference = image_embeddings(provider, records, None, progress=False)
    # reference: the same records embedded without a cache; tolerance: same model and inputs, exact
    torch.testing.assert_close(emb, reference, rtol=0, atol=0)
    assert text.shape == (2, emb.shape[1])
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"warning: embedding cache {blocker} is not writable (")
    assert warnings[0].endswith("); continuing without it")
    assert blocker.read_text() == "x"


def test_full_disk_cache_warns_and_goes_on(tiny: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    def full_disk(*args: Any, **kwargs: Any) -> None:
        raise safetensors.SafetensorError("Error while serializing: IoError(No space left on device (os error 28))")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    cache = tmp_path / "cache"
    emb = text_embeddings(ClipProvider(tiny["spec"]), ["ant", "bee"], ["a photo of a {}."], cache)
    assert emb.shape[0] == 2 and torch.isfinite(emb).all()
    err = capsys.readouterr().err
    assert "warning: embedding cache" in err and "No space left" in err
    assert not cache.exists() or list(cache.iterdir()) == [], "a partial cache entry was left"


@pytest.mark.parametrize("poison", ["nan", "zero"])
def test_poisoned_cache_entry_is_rebuilt(tiny: dict[str, Any], tmp_path: Path, poison: str) -> None:
    cache = tmp_path / "cache"
    records = image_folder_dataset(tiny["data"]).train
    emb = image_embeddings(ClipProvider(tiny["spec"]), records, cache, progress=False)
    (entry,) = list(cache.glob("*.safetensors"))
    bad = emb.clone()
    bad[2] = float("nan") if poison == "nan" else 0.0
    save_file({"embeddings": bad}, str(entry))
    again = ClipProvider(tiny["spec"])
    rebuilt = image_embeddings(again, records, cache, progress=False)
    assert again.loads == 1, "the poisoned entry was used"
    # reference: the first, clean embedding run; tolerance: same model and inputs, exact
    torch.testing.assert_close(rebuilt, emb, rtol=0, atol=0)
    assert EmbeddingCache(cache).load(entry.stem, rows=len(records)) is not None, "the entry was not rewritten"
