"""Few-shot training of a head on cached embeddings (docs/design.md §2.1): Adam (lr 1e-2, weight decay
1e-4, constant LR), batch 256, cross-entropy over the classes of the current label set, early
stopping on validation accuracy with patience, the best weights kept, seeded shuffling.

The same loop trains the Multi-Modal Adapter and the CLIP-Adapter baseline. The CLIP is not part of
it at all: its embeddings were computed once (:mod:`mmadapter.data.embeddings`).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from mmadapter.errors import DataError
from mmadapter.model.adapter import MultiModalAdapter
from mmadapter.model.baselines import head_logits
from mmadapter.model.config import TrainConfig


@dataclass(frozen=True)
class EmbeddedSplit:
    """Cached image embeddings [n, C] and their labels [n] (indices into the label set's classes)."""

    image_emb: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.image_emb.ndim != 2 or self.labels.shape != (self.image_emb.shape[0],):
            raise DataError(
                f"embeddings {list(self.image_emb.shape)} and labels {list(self.labels.shape)} do not match"
            )

    def __len__(self) -> int:
        return self.labels.shape[0]


@dataclass
class TrainResult:
    head: nn.Module  # with the best validation weights loaded, in eval mode
    history: list[dict[str, float]] = field(default_factory=list)  # one row per epoch
    best_epoch: int = 0
    best_val_acc: float = float("nan")
    stopped_early: bool = False
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {"epochs": len(self.history), "best_epoch": self.best_epoch, "best_val_acc": self.best_val_acc,
                "stopped_early": self.stopped_early, "seconds": round(self.seconds, 3)}


@torch.no_grad()
def predict_logits(
    head: nn.Module, image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: float = 100.0,
    batch_size: int = 1024,
) -> torch.Tensor:
    """[n, N] logits in eval mode. The Multi-Modal Adapter runs on a class bank built once for this
    label set, which is how any label set (a novel one included) is used at inference."""
    was_training = head.training
    head.eval()
    classes: Any = head.class_bank(text_emb) if isinstance(head, MultiModalAdapter) else text_emb
    out = [head_logits(head, image_emb[i : i + batch_size], classes, logit_scale)
           for i in range(0, image_emb.shape[0], batch_size)]
    head.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, text_emb.shape[0])


def accuracy(head: nn.Module, split: EmbeddedSplit, text_emb: torch.Tensor, logit_scale: float = 100.0) -> float:
    """Top-1 accuracy in percent."""
    if len(split) == 0:
        return float("nan")
    logits = predict_logits(head, split.image_emb, text_emb, logit_scale)
    return 100.0 * (logits.argmax(dim=-1) == split.labels).float().mean().item()


def train_head(
    head: nn.Module,
    train: EmbeddedSplit,
    text_emb: torch.Tensor,
    config: TrainConfig | None = None,
    val: EmbeddedSplit | None = None,
    logit_scale: float = 100.0,
    progress: bool = True,
    desc: str = "training",
) -> TrainResult:
    """Train ``head`` in place and return it with the best validation weights and the history.
    A head without trainable parameters (zero-shot CLIP) is returned as it is."""
    config = config or TrainConfig()
    if len(train) == 0:
        raise DataError("no training examples")
    if int(train.labels.max()) >= text_emb.shape[0] or int(train.labels.min()) < 0:
        raise DataError(f"training labels fall outside the {text_emb.shape[0]} classes of the label set")
    for what, emb in (("training image", train.image_emb), ("class text", text_emb),
                      ("validation image", val.image_emb if val is not None else None)):
        if emb is not None and not torch.isfinite(emb).all():
            raise DataError(f"the {what} embeddings contain NaN or infinite values")
    params = [p for p in head.parameters() if p.requires_grad]
    start = time.perf_counter()
    if not params:
        head.eval()
        val_acc = accuracy(head, val, text_emb, logit_scale) if val is not None else float("nan")
        return TrainResult(head, [], 0, val_acc, False, time.perf_counter() - start)
    text_emb = text_emb.detach()  # the CLIP's side is frozen: no gradient flows into embeddings
    optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)  # shuffling independent of global RNG state
    result = TrainResult(head)
    best_state = copy.deepcopy(head.state_dict())
    best_val, since_best = -1.0, 0
    bar = tqdm(range(1, config.max_epochs + 1), desc=desc, unit="epoch", disable=not progress, leave=False)
    for epoch in bar:
        head.train()
        order = torch.randperm(len(train), generator=generator)
        total_loss, correct = 0.0, 0
        for i in range(0, len(train), config.batch_size):
            idx = order[i : i + config.batch_size]
            logits = head_logits(head, train.image_emb[idx], text_emb, logit_scale)
            loss = F.cross_entropy(logits, train.labels[idx])
            if not torch.isfinite(loss):
                raise _diverged(f"the loss became {loss.item()}", epoch, config)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * idx.numel()
            correct += int((logits.argmax(dim=-1) == train.labels[idx]).sum())
        if not all(torch.isfinite(p).all() for p in params):
            raise _diverged("the weights became NaN or infinite", epoch, config)
        row = {"epoch": epoch, "train_loss": total_loss / len(train), "train_acc": 100.0 * correct / len(train)}
        # Without a validation split, the training accuracy stands in (then the last best epoch wins).
        has_val = val is not None and len(val) > 0
        row["val_acc"] = accuracy(head, val, text_emb, logit_scale) if has_val else row["train_acc"]
        result.history.append(row)
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", val=f"{row['val_acc']:.1f}")
        if row["val_acc"] > best_val:
            best_val, since_best, result.best_epoch = row["val_acc"], 0, epoch
            best_state = copy.deepcopy(head.state_dict())
        else:
            since_best += 1
            if since_best >= config.patience:
                result.stopped_early = True
                break
    bar.close()
    head.load_state_dict(best_state)
    head.eval()
    result.best_val_acc = best_val
    result.seconds = time.perf_counter() - start
    return result


def _diverged(what: str, epoch: int, config: TrainConfig) -> DataError:
    # Nothing is written after this: the caller saves a checkpoint only from a finished run.
    return DataError(f"training diverged: {what} at epoch {epoch} (learning rate {config.lr:g} is too high?)")


__all__ = ["EmbeddedSplit", "TrainResult", "accuracy", "predict_logits", "train_head"]
