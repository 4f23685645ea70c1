"""The model: the adapter and its exact fast path, the frozen CLIP it sits on, typed configs, checkpoints
(ours and the authors'), the baselines it is compared with, and top-k classification in torch."""
