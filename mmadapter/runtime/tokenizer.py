"""CLIP's tokenizer without torch: open_clip's byte-level BPE run by Hugging Face ``tokenizers`` (Rust).

At export, ``mmadapter.export.tokenizer.write_tokenizer`` turns the vocabulary and merges of the
checkpoint's own open_clip tokenizer (``SimpleTokenizer``, built from open_clip's ``bpe_simple_vocab_16e6.txt.gz``)
into a
``tokenizer.json`` in the export folder, hashed in the manifest like every graph. On a serving
machine :class:`ClipTokenizer` reads it back and gives the same token ids as open_clip:

- text cleaning in Python, the same calls in the same order as open_clip's ``_clean_lower``
  (``ftfy.fix_text``, ``html.unescape`` twice, whitespace collapsed, ``str.lower``): ``tokenizers``'
  normalizers know neither ftfy nor HTML entities, and Python's ``str.split``/``str.lower`` are the
  definition of "whitespace" and "lower case" open_clip uses;
- the split into words by open_clip's own pattern (as a ``Split`` pre-tokenizer that keeps the
  matches, i.e. ``regex.findall``), then GPT-2's byte-to-unicode map and BPE with the ``</w>``
  end-of-word suffix, in Rust;
- ``<start_of_text>``/``<end_of_text>`` written in a text become the special ids only where
  open_clip's pattern matches them as a word (a preceding punctuation character swallows the ``<``
  there), so they are not ``tokenizers`` "added tokens", which would match anywhere;
- start token, ids, end token, truncated to the context length with the end token kept last, padded
  with 0, exactly as ``SimpleTokenizer.__call__``.

No torch here: the serving runtime imports this module.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mmadapter.errors import ExportError
from mmadapter.files import first_line

if TYPE_CHECKING:
    from mmadapter.runtime.manifest import Tokenizer

TOKENIZER_FILE = "tokenizer.json"
KIND = "clip-bpe"
SPECIAL_TOKENS = ("<start_of_text>", "<end_of_text>")
# Their ids in CLIP's vocabulary (open_clip's SimpleTokenizer appends them after the 49,406 BPE entries): the
# defaults here, and the ids export/specs.py traces the text encoder with; the end token is the highest id, so
# the graph's argmax finds it.
SOT_TOKEN_ID = 49406
EOT_TOKEN_ID = 49407
# open_clip's SimpleTokenizer pattern (case-insensitive), with the special tokens first as it builds it.
WORD_PATTERN = r"""(?i)<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
CLEANING = "ftfy.fix_text, html.unescape twice, strip, whitespace collapsed, lower-cased (open_clip 'lower')"


def import_tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError:
        raise ExportError("the tokenizers library is not installed: pip install 'tokenizers>=0.19'") from None
    return tokenizers


def clean_text(text: str) -> str:
    """open_clip's ``_clean_lower``: ``whitespace_clean(basic_clean(text)).lower()``."""
    try:
        import ftfy
    except ImportError:
        raise ExportError("ftfy is not installed (CLIP's text cleaning needs it): pip install 'ftfy>=6'") from None
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return " ".join(text.split()).strip().lower()


class ClipTokenizer:
    """Strings -> CLIP token ids ``[n, context_length]`` (int64), identical to open_clip's tokenizer."""

    def __init__(self, path: str | Path, context_length: int = 77, sot_token_id: int = SOT_TOKEN_ID,
                 eot_token_id: int = EOT_TOKEN_ID, special_tokens: dict[str, int] | None = None):
        tk = import_tokenizers()
        self.path = Path(path)
        try:
            self._tok = tk.Tokenizer.from_file(str(self.path))
        except Exception as exc:  # noqa: BLE001 - the Rust library raises its own exception type
            raise ExportError(f"cannot read tokenizer {self.path}: {first_line(exc)}") from None
        if context_length < 2:
            raise ExportError(f"tokenizer context length must be >= 2, got {context_length}")
        self.context_length = int(context_length)
        self.sot_token_id = int(sot_token_id)
        self.eot_token_id = int(eot_token_id)
        self.special_tokens = dict(special_tokens if special_tokens is not None
                                   else zip(SPECIAL_TOKENS, (self.sot_token_id, self.eot_token_id)))

    @classmethod
    def from_manifest(cls, folder: str | Path, fields: Tokenizer, path: Path | None = None) -> ClipTokenizer:
        """The tokenizer an export's manifest describes (``path``: the verified file, if already checked)."""
        if fields.kind != KIND:
            raise ExportError(f"{folder} has no torch-free tokenizer (its manifest names {fields.kind!r}); export "
                              "the checkpoint again with this version of mmadapter")
        return cls(path or Path(folder) / fields.file, fields.context_length, fields.sot_token_id,
                   fields.eot_token_id, dict(fields.special_tokens) if fields.special_tokens is not None else None)

    def _words_to_ids(self, text: str) -> list[int]:
        """Slow path for a text that holds a special token's spelling: the words one by one."""
        ids: list[int] = []
        for word, _ in self._tok.pre_tokenizer.pre_tokenize_str(text):
            if word in self.special_tokens:
                ids.append(self.special_tokens[word])
            else:
                ids.extend(t.id for t in self._tok.model.tokenize(word))
        return ids

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """BPE ids of each text after cleaning, without start/end tokens or truncation."""
        if isinstance(texts, str):
            texts = [texts]
        cleaned = [clean_text(t) for t in texts]
        plain = [i for i, t in enumerate(cleaned) if not any(s in t for s in self.special_tokens)]
        out: list[list[int]] = [[] for _ in cleaned]
        for i, enc in zip(plain, self._tok.encode_batch([cleaned[i] for i in plain], add_special_tokens=False)):
            out[i] = list(enc.ids)
        for i in sorted(set(range(len(cleaned))) - set(plain)):
            out[i] = self._words_to_ids(cleaned[i])
        return out

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> np.ndarray:
        """``[len(texts), context_length]`` int64: start token, ids, end token, zero padding; a text
        too long keeps its first ``context_length`` tokens with the last one replaced by the end token."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        length = context_length or self.context_length
        result = np.zeros((len(texts), length), dtype=np.int64)
        for row, ids in enumerate(self.encode(texts)):
            tokens = [self.sot_token_id, *ids, self.eot_token_id]
            if len(tokens) > length:
                tokens = tokens[:length]
                tokens[-1] = self.eot_token_id
            result[row, :len(tokens)] = tokens
        return result

