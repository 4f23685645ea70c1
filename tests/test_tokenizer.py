"""The torch-free tokenizer (``mmadapter.runtime.tokenizer``) against open_clip's own: identical token ids,
exact equality (no tolerance: ids are integers), on a corpus of 1,500 strings generated here plus hand-made
boundary cases, at CLIP's context length and at short ones that force truncation."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import open_clip
import pytest

from mmadapter.errors import ExportError
from mmadapter.export.tokenizer import write_tokenizer
from mmadapter.runtime.manifest import Tokenizer
from mmadapter.runtime.tokenizer import EOT_TOKEN_ID, SOT_TOKEN_ID, TOKENIZER_FILE, ClipTokenizer

CORPUS_SIZE = 1500

WORDS = ["a", "photo", "of", "the", "dog", "Cat", "GOLDEN", "retriever", "x-ray", "e-mail", "don't", "we've",
         "I'LL", "it's", "THEY'RE", "you'd", "he'S", "o'clock", "rock'n'roll", "hello_world", "snake_case_name",
         "ViT-B/16", "3.14159", "1,000,000", "2024-01-31", "#hashtag", "@user", "https://example.com/a?b=c&d=e",
         "C++", "a.k.a.", "U.S.A.", "naïve", "café", "résumé", "Ærøskøbing", "straße", "STRASSE", "İstanbul",
         "ǅemal", "ſtreet", "\u212aelvin", "ﬁnance", "Ωmega", "ελληνικά", "русский", "日本語のテキスト", "中文字符",
         "한국어", "العربية", "עברית", "हिन्दी", "ไทย", "½", "²", "Ⅻ", "٣", "一二三", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "ｆｕｌｌｗｉｄｔｈ"]
EMOJI = ["🐶", "🐱", "👍🏽", "👨‍👩‍👧‍👦", "🇫🇷", "❤️", "🏳️‍🌈", "😀😃😄", "🤖", "☕", "1️⃣", "©", "™", "🀄"]
PUNCT = [".", ",", "!", "?", "!!!", "...", "…", "—", "–", "-", "(", ")", "[x]", "{}", "\"quoted\"", "“curly”",
         "‘single’", "'", "''", "`", "~", "^", "*", "/", "\\", "|", "<", ">", "<<>>", ";", ":", "%", "$5", "€10",
         "£", "¥", "§", "¶", "•", "·", "°", "±", "×", "÷", "→", "∑", "√", "∞", "«guillemets»", "¿qué?", "¡sí!"]
ENTITIES = ["&amp;", "&#39;", "&lt;b&gt;", "&quot;", "&nbsp;", "&eacute;", "&#233;", "&#xE9;", "&amp;amp;",
            "&amp;#39;", "&copy;", "&hellip;", "&mdash;", "&#128054;", "&notanentity;", "&", "&#;", "&#x;"]
SPACES = [" ", "  ", "\t", "\n", "\r\n", "   \t\n  ", "\u00a0", "\u2003", "\u3000", "\x0b", "\x0c", "\x1c", "\u2028",
          "\u200b", "\u200d", "\ufeff"]
MOJIBAKE = ["cafÃ©", "â€œquotedâ€\x9d", "Ã¼ber", "doesnâ€™t", "ðŸ˜€", "Ã\xa0 la"]
SPECIAL = ["<start_of_text>", "<end_of_text>", "<START_OF_TEXT>", "x<end_of_text>y", "!<start_of_text>",
           "< end_of_text >", "<|endoftext|>", "<start_of_text><end_of_text>"]
CONTROLS = ["\x00", "\x07", "\x1b[31m", "\x7f", "\ud7ff", "\U0010ffff", "\u0301", "e\u0301", "\u202e", "\ufffd"]
POOLS = [WORDS] * 6 + [EMOJI, PUNCT, PUNCT, ENTITIES, SPACES, SPACES, MOJIBAKE, SPECIAL, CONTROLS]


def corpus(size: int = CORPUS_SIZE, seed: int = 0) -> list[str]:
    """Strings mixing every pool above (joined with or without spaces, case-changed, some far longer than
    77 tokens), plus fixed boundary cases: the empty string, whitespace only, each pool item alone."""
    rng = random.Random(seed)
    fixed = ["", " ", "\n\t ", "a", "A", "&amp;" * 3, *[s for pool in (WORDS, EMOJI, PUNCT, ENTITIES, SPACES, MOJIBAKE,
                                                                         SPECIAL, CONTROLS) for s in pool]]
    # Exactly at and around the context length: "a" is one token, so k words give k + 2 ids.
    fixed += ["a " * k for k in (74, 75, 76, 77, 200)]
    out = list(fixed)
    while len(out) < size:
        n = rng.choice([1, 2, 3, 5, 8, 13, 40, 120])
        parts = [rng.choice(rng.choice(POOLS)) for _ in range(n)]
        joiner = rng.choice([" ", "", " ", "  ", "\t", "_", "-"])
        text = joiner.join(parts)
        case = rng.random()
        text = text.upper() if case < 0.15 else text.title() if case < 0.25 else text
        out.append(text)
    return out


@pytest.fixture(scope="module")
def reference() -> object:
    return open_clip.get_tokenizer("ViT-B-16")


@pytest.fixture(scope="module")
def served(reference: object, tmp_path_factory: pytest.TempPathFactory) -> ClipTokenizer:
    folder = tmp_path_factory.mktemp("tokenizer")
    fields = write_tokenizer(folder, reference)
    return ClipTokenizer.from_manifest(folder, fields)


def test_corpus_is_varied() -> None:
    texts = corpus()
    assert len(texts) >= 1000 and len(set(texts)) >= 1000
    assert "" in texts
    for needle in ("&amp;", "&#39;", "🐶", "é", "\u3000", "<start_of_text>"):
        assert any(needle in t for t in texts), needle
    assert any(t.isupper() for t in texts) and any(len(t) > 1000 for t in texts)


@pytest.mark.parametrize("context_length", [77, 16, 5, 2])
def test_ids_identical_to_open_clip(reference: object, served: ClipTokenizer, context_length: int) -> None:
    """Reference: open_clip.get_tokenizer('ViT-B-16')(texts, context_length). Tolerance: none (equality)."""
    texts = corpus()
    want = reference(texts, context_length=context_length).numpy()
    got = served(texts, context_length=context_length)
    assert got.dtype == np.int64 and got.shape == want.shape == (len(texts), context_length)
    bad = [texts[i] for i in np.flatnonzero((got != want).any(axis=1))]
    assert not bad, f"{len(bad)} texts differ, first {bad[0]!r}"


def test_special_ids_are_open_clips(reference: object, served: ClipTokenizer) -> None:
    """The start/end ids written once in the runtime (and traced into the text encoder by export/specs.py) are
    the ones open_clip's tokenizer gives, and the ones the written tokenizer.json carries."""
    assert (reference.sot_token_id, reference.eot_token_id) == (SOT_TOKEN_ID, EOT_TOKEN_ID)
    assert (served.sot_token_id, served.eot_token_id) == (SOT_TOKEN_ID, EOT_TOKEN_ID)
    assert list(reference([""])[0, :2]) == [SOT_TOKEN_ID, EOT_TOKEN_ID]


def test_truncation_keeps_the_end_token(served: ClipTokenizer) -> None:
    ids = served(["a " * 200, "a " * 75, "a " * 76, ""])
    eot, sot = served.eot_token_id, served.sot_token_id
    assert ids[0, -1] == eot and ids[0, 0] == sot and (ids[0] != 0).all()
    assert ids[1, -1] == eot and (ids[1] != 0).all()  # 75 words + start + end fill 77 exactly
    assert ids[2, -1] == eot and ids[2, -2] != eot  # one word too many: the last word gives way to the end token
    assert list(ids[3, :3]) == [sot, eot, 0] and not ids[3, 2:].any()


def test_special_token_spelled_in_text_follows_open_clip(reference: object, served: ClipTokenizer) -> None:
    """open_clip makes '<end_of_text>' in a text the end id only where its word pattern starts a match there."""
    texts = ["x <end_of_text>", "!<end_of_text>"]
    want = reference(texts).numpy()
    assert (served(texts) == want).all()
    assert (want[0] == served.eot_token_id).sum() == 2 and (want[1] == served.eot_token_id).sum() == 1


def test_tokenizer_file_is_self_contained(served: ClipTokenizer, reference: object, tmp_path: Path) -> None:
    """The written file alone (copied elsewhere, no open_clip vocabulary file) gives the same ids."""
    copy = tmp_path / TOKENIZER_FILE
    copy.write_bytes(served.path.read_bytes())
    again = ClipTokenizer(copy)
    texts = corpus(200, seed=1)
    assert (again(texts) == reference(texts).numpy()).all()


def test_unreadable_tokenizer_is_one_export_error(tmp_path: Path) -> None:
    bad = tmp_path / TOKENIZER_FILE
    bad.write_text("{not json")
    with pytest.raises(ExportError, match="cannot read tokenizer") as info:
        ClipTokenizer(bad)
    assert "\n" not in str(info.value)
    with pytest.raises(ExportError, match="no torch-free tokenizer"):
        ClipTokenizer.from_manifest(tmp_path, Tokenizer("tokenizer.json", "other", 77, 1, 2))
    with pytest.raises(ExportError, match=r"tokenizer.file: missing; tokenizer.kind: missing") as info:
        Tokenizer.from_dict({"context_length": 77})
    assert "\n" not in str(info.value)


def test_unsupported_open_clip_tokenizer_is_refused(reference: object) -> None:
    from mmadapter.export.tokenizer import from_open_clip

    class OtherTokenizer:
        context_length = 77

    with pytest.raises(ExportError, match="OtherTokenizer"):
        from_open_clip(OtherTokenizer())
