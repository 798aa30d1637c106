"""The CLIP BPE tokenizer shipped with the project (built by ``scripts/build_clip_tokenizer.py``)."""

from __future__ import annotations

from pathlib import Path

from transformers import CLIPTokenizer

CLIP_TOKENIZER_DIR: Path = Path(__file__).resolve().parent / "clip_tokenizer"


def load_clip_tokenizer() -> CLIPTokenizer:
    """Load OpenAI CLIP's tokenizer (vocab 49408, BOS 49406, EOS/pad 49407, 77 tokens) from the shipped files."""
    return CLIPTokenizer.from_pretrained(str(CLIP_TOKENIZER_DIR))
