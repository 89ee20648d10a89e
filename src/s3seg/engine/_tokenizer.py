"""SAM3's text tokenizer, built offline from the CLIP BPE vocabulary that ``open_clip_torch`` ships.

SAM3 uses OpenAI CLIP's byte-level BPE (49,408 tokens). Official ``sam3.pt`` checkpoints come without
tokenizer files, so s3seg builds a ``transformers.CLIPTokenizer`` from ``bpe_simple_vocab_16e6.txt.gz``
(MIT licensed, inside ``open_clip``); it yields the same ids as SAM3's own tokenizer.
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING

from s3seg.errors import DependencyError

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

CONTEXT_LENGTH = 32  # SAM3's text context (tokens, start and end included)


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte → printable character table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


@lru_cache(maxsize=1)
def build_clip_tokenizer() -> CLIPTokenizer:
    """A CLIPTokenizer equal to SAM3's, from open_clip's BPE file (no network)."""
    try:
        vocab_file = resources.files("open_clip") / "bpe_simple_vocab_16e6.txt.gz"
        raw = gzip.decompress(vocab_file.read_bytes()).decode("utf-8")
    except (ModuleNotFoundError, FileNotFoundError) as e:
        raise DependencyError(
            "building SAM3's tokenizer needs the CLIP vocabulary from open_clip_torch",
            hint="pip install 's3seg[official]' (or pass a model directory that has tokenizer files)",
        ) from e
    from transformers import CLIPTokenizer

    merges = raw.split("\n")[1 : 49152 - 256 - 2 + 1]
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    pairs = [tuple(m.split()) for m in merges]
    return CLIPTokenizer(vocab=vocab, merges=pairs, model_max_length=CONTEXT_LENGTH)  # type: ignore[arg-type]
