"""Typed configs for the adapter and its training, loaded from JSON files in ``configs/``.

Adapter configs live in ``configs/adapter/<name>.json`` and map onto :class:`AdapterConfig`;
``configs/clip/*.json`` are extra open_clip model configs (the tiny random CLIP of the demo and
the tests) registered with open_clip by :mod:`mmadapter.model.backbone`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmadapter.errors import ConfigError
from mmadapter.files import first_line

CONFIG_DIR = Path(__file__).parent / "configs"
ADAPTER_CONFIG_DIR = CONFIG_DIR / "adapter"
CLIP_CONFIG_DIR = CONFIG_DIR / "clip"


@dataclass(frozen=True)
class AdapterConfig:
    """Shape of the Multi-Modal Adapter (docs/design.md §1.2)."""

    embed_dim: int = 512  # C: width of CLIP's projected embeddings
    reduction: int = 4  # bottleneck width is C / reduction
    num_heads: int = 4
    blend: float = 0.2  # lambda: weight of the adapter output in the residual blend

    def __post_init__(self) -> None:
        for name in ("embed_dim", "reduction", "num_heads"):
            check_int(getattr(self, name), f"adapter config {name}")
        object.__setattr__(self, "blend", check_float(self.blend, "adapter config blend"))
        if self.embed_dim <= 0 or self.reduction <= 0 or self.num_heads <= 0:
            raise ConfigError(f"adapter config has a non-positive size: {self}")
        if self.embed_dim % self.reduction:
            raise ConfigError(f"embed_dim {self.embed_dim} is not divisible by reduction {self.reduction}")
        if self.bottleneck_dim % self.num_heads:
            raise ConfigError(
                f"bottleneck width {self.bottleneck_dim} is not divisible by num_heads {self.num_heads}"
            )
        if not 0.0 <= self.blend <= 1.0:
            raise ConfigError(f"blend must lie in [0, 1], got {self.blend}")

    @property
    def bottleneck_dim(self) -> int:
        return self.embed_dim // self.reduction

    @property
    def head_dim(self) -> int:
        return self.bottleneck_dim // self.num_heads

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdapterConfig:
        return _from_dict(cls, data, "adapter config")


@dataclass(frozen=True)
class TrainConfig:
    """Few-shot training settings; defaults are the paper's (docs/design.md §2.1)."""

    lr: float = 1e-2
    weight_decay: float = 1e-4
    batch_size: int = 256
    max_epochs: int = 200
    patience: int = 5  # epochs without a better validation accuracy before stopping
    shots: int = 16
    seed: int = 1

    def __post_init__(self) -> None:
        lr = check_float(self.lr, "learning rate")
        if not 0 < lr <= MAX_STEP_SETTING:
            raise ConfigError(f"learning rate must be > 0 and at most {MAX_STEP_SETTING:g}, got {lr!r}")
        weight_decay = check_float(self.weight_decay, "weight decay")
        if not 0 <= weight_decay <= MAX_STEP_SETTING:
            raise ConfigError(f"weight decay must be >= 0 and at most {MAX_STEP_SETTING:g}, got {weight_decay!r}")
        object.__setattr__(self, "lr", lr)
        object.__setattr__(self, "weight_decay", weight_decay)
        for name in ("batch_size", "max_epochs", "patience", "shots"):
            if check_int(getattr(self, name), f"training {name}") < 1:
                raise ConfigError(f"training {name} must be at least 1, got {getattr(self, name)}")
        lo, hi = SEED_RANGE
        if not lo <= check_int(self.seed, "seed") <= hi:
            raise ConfigError(f"seed must lie in {lo}..{hi}, got {self.seed}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return _from_dict(cls, data, "training config")


@dataclass(frozen=True)
class ClipSpec:
    """Which frozen CLIP an adapter belongs to.

    ``pretrained`` is an open_clip pretrained tag (``openai``) or ``None``; ``weights_path`` a local
    weights file (then ``weights_sha256`` pins its content). Neither means random weights.
    """

    model_name: str
    pretrained: str | None = None
    weights_path: str | None = None
    weights_sha256: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model_name, str) or not self.model_name.strip():
            raise ConfigError(f"CLIP spec model_name must be a non-empty string, got {self.model_name!r}")
        for name in ("pretrained", "weights_path", "weights_sha256"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"CLIP spec {name} must be a string or null, got {type(value).__name__}")
        if self.weights_sha256 is not None and not SHA256_PATTERN.fullmatch(self.weights_sha256):
            raise ConfigError(f"CLIP spec weights_sha256 {self.weights_sha256[:80]!r} is not a sha256 "
                              "(64 lower-case hex digits)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClipSpec:
        return _from_dict(cls, data, "CLIP spec")

    def describe(self) -> str:
        if self.weights_path:
            return f"{self.model_name} (weights {self.weights_path})"
        return f"{self.model_name} ({self.pretrained or 'random weights'})"


SEED_RANGE = (0, 2**32 - 1)  # what numpy's and torch's generators accept
# Far beyond any useful Adam step size or decay, and far below where torch's fp32 optimizer arithmetic
# overflows into an exception (1e38) instead of a loss that training can report as diverged.
MAX_STEP_SETTING = 1e6
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")


def check_int(value: object, what: str) -> int:
    """An int that is not a bool (JSON ``true`` and ``512.0`` are not widths)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{what} must be a whole number, got {_shown(value)}")
    return value


def check_float(value: object, what: str) -> float:
    """A finite int or float that is not a bool, as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{what} must be a number, got {_shown(value)}")
    try:
        result = float(value)
    except OverflowError:  # an int too large for a float
        raise ConfigError(f"{what} {str(value)[:40]}... is too large") from None
    if not math.isfinite(result):
        raise ConfigError(f"{what} must be a finite number, got {result!r}")
    return result


def _shown(value: object) -> str:
    text = repr(value)
    return f"{text[:60]}... ({type(value).__name__})" if len(text) > 60 else f"{text} ({type(value).__name__})"


def _from_dict(cls: type, data: dict[str, Any], what: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{what} must be a JSON object, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(str(k)[:40] for k in set(data) - names)
    if unknown:
        raise ConfigError(f"{what} has unknown keys {unknown[:5]}; known keys are {sorted(names)}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise ConfigError(f"{what} is invalid: {exc}") from None


def list_adapter_configs() -> list[str]:
    return sorted(p.stem for p in ADAPTER_CONFIG_DIR.glob("*.json"))


def get_adapter_config(name_or_path: str) -> AdapterConfig:
    """Load an adapter config by registry name (``mma-vit-b``) or from a JSON file path."""
    path = Path(name_or_path)
    if not path.suffix == ".json":
        path = ADAPTER_CONFIG_DIR / f"{name_or_path}.json"
        if not path.is_file():
            raise ConfigError(
                f"unknown adapter config {name_or_path!r}; known: {', '.join(list_adapter_configs())}"
            )
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON or bad UTF-8
        raise ConfigError(f"cannot read adapter config {path}: {first_line(exc)}") from None
    return AdapterConfig.from_dict(data)


def adapter_config_for_width(embed_dim: int) -> AdapterConfig:
    """The registered adapter config whose width matches a CLIP embedding width."""
    for name in list_adapter_configs():
        cfg = get_adapter_config(name)
        if cfg.embed_dim == embed_dim:
            return cfg
    return AdapterConfig(embed_dim=embed_dim)


__all__ = [
    "AdapterConfig",
    "ClipSpec",
    "TrainConfig",
    "adapter_config_for_width",
    "check_float",
    "check_int",
    "get_adapter_config",
    "list_adapter_configs",
]
