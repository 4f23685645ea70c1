"""``tokenizer.json`` for an export: open_clip's CLIP tokenizer (its vocabulary and merges) described for
Hugging Face ``tokenizers``, which :class:`mmadapter.runtime.tokenizer.ClipTokenizer` serves without torch."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmadapter.errors import ExportError
from mmadapter.files import atomic_write_text
from mmadapter.runtime.manifest import Tokenizer
from mmadapter.runtime.tokenizer import (
    CLEANING,
    KIND,
    SPECIAL_TOKENS,
    TOKENIZER_FILE,
    WORD_PATTERN,
    import_tokenizers,
)


def tokenizer_json(vocab: dict[str, int], merges: Sequence[tuple[str, str]]) -> str:
    """The ``tokenizers`` description (JSON text) of CLIP's BPE with this vocabulary and these merges
    (merges in rank order)."""
    tk = import_tokenizers()
    model = tk.models.BPE(vocab=dict(vocab), merges=[tuple(m) for m in merges], end_of_word_suffix="</w>",
                          continuing_subword_prefix="", fuse_unk=False, dropout=None)
    tok = tk.Tokenizer(model)
    tok.pre_tokenizer = tk.pre_tokenizers.Sequence([
        # invert=True keeps the matches and drops what lies between them (whitespace): regex.findall.
        tk.pre_tokenizers.Split(tk.Regex(WORD_PATTERN), behavior="removed", invert=True),
        tk.pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = tk.decoders.ByteLevel()
    return tok.to_str()


def from_open_clip(tokenizer: Any) -> tuple[str, dict[str, Any]]:
    """(``tokenizer.json`` text, the manifest's ``tokenizer`` fields) for an open_clip tokenizer. Only
    the plain CLIP tokenizer (``SimpleTokenizer`` with its default cleaning, no reduction) is known
    to give the same ids; anything else is an ExportError naming it."""
    name = type(tokenizer).__name__
    encoder, ranks = getattr(tokenizer, "encoder", None), getattr(tokenizer, "bpe_ranks", None)
    clean_fn = getattr(getattr(tokenizer, "clean_fn", None), "__name__", None)
    if (name != "SimpleTokenizer" or not isinstance(encoder, dict) or not isinstance(ranks, dict)
            or clean_fn != "_clean_lower" or getattr(tokenizer, "reduction_fn", None) is not None):
        raise ExportError(f"open_clip tokenizer {name} (cleaning {clean_fn}) cannot be served without torch; "
                          "only CLIP's SimpleTokenizer with 'lower' cleaning is supported")
    merges = [pair for pair, _ in sorted(ranks.items(), key=lambda item: item[1])]
    specials = {t: encoder[t] for t in SPECIAL_TOKENS}
    fields = {
        "file": TOKENIZER_FILE,
        "kind": KIND,
        "library": "tokenizers",
        "context_length": int(tokenizer.context_length),
        "sot_token_id": int(tokenizer.sot_token_id),
        "eot_token_id": int(tokenizer.eot_token_id),
        "pad_token_id": 0,
        "special_tokens": specials,
        "vocab_size": len(encoder),
        "cleaning": CLEANING,
    }
    return tokenizer_json(encoder, merges), fields


def write_tokenizer(folder: Path, tokenizer: Any) -> Tokenizer:
    """Write ``tokenizer.json`` into ``folder`` (atomically); returns the manifest's ``tokenizer`` section."""
    text, fields = from_open_clip(tokenizer)
    atomic_write_text(Path(folder) / TOKENIZER_FILE, text)
    return Tokenizer.from_dict(fields)
