"""Errors that reach the user as one line (the CLI prints ``error: <message>`` and exits non-zero)."""


class MMAdapterError(Exception):
    """Base class: anything a user gave us that we cannot use."""


class ConfigError(MMAdapterError, ValueError):
    """A config that is malformed or does not match the CLIP model."""


class CheckpointError(MMAdapterError, ValueError):
    """A checkpoint file that is missing, truncated, corrupt or inconsistent."""


class DataError(MMAdapterError, ValueError):
    """A dataset, image, split file or class list that cannot be used."""


class ExportError(MMAdapterError, RuntimeError):
    """An export, validation or engine build that failed."""
