"""The shipped CLIP tokenizer and the script that builds it."""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest
from transformers import CLIPTokenizer

from sdtoolkit.core.tokenizer import CLIP_TOKENIZER_DIR, load_clip_tokenizer

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "build_clip_tokenizer.py"


@pytest.fixture(scope="module")
def tokenizer() -> CLIPTokenizer:
    return load_clip_tokenizer()


@pytest.fixture(scope="module")
def build_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_clip_tokenizer", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_encodes_a_photo_of_a_cat(tokenizer: CLIPTokenizer) -> None:
    assert tokenizer.encode("a photo of a cat") == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_lowercases_and_splits_punctuation(tokenizer: CLIPTokenizer) -> None:
    assert tokenizer.encode("A Photo of a CAT!", add_special_tokens=False) == [320, 1125, 539, 320, 2368, 256]


def test_special_tokens_and_length(tokenizer: CLIPTokenizer) -> None:
    assert isinstance(tokenizer, CLIPTokenizer)
    assert (tokenizer.bos_token, tokenizer.bos_token_id) == ("<|startoftext|>", 49406)
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|endoftext|>", 49407)
    assert tokenizer.pad_token_id == 49407
    assert tokenizer.unk_token == "<|endoftext|>"
    assert tokenizer.model_max_length == 77
    assert len(tokenizer) == 49408


def test_pads_and_truncates_to_77(tokenizer: CLIPTokenizer) -> None:
    ids = tokenizer("a cat", padding="max_length", max_length=tokenizer.model_max_length).input_ids
    assert ids[:4] == [49406, 320, 2368, 49407]
    assert ids[4:] == [49407] * 73
    long_ids = tokenizer(" ".join(["cat"] * 100), truncation=True, max_length=77).input_ids
    assert len(long_ids) == 77 and long_ids[0] == 49406 and long_ids[-1] == 49407


def test_shipped_files(build_script: ModuleType) -> None:
    names = {path.name for path in CLIP_TOKENIZER_DIR.iterdir()}
    assert {"vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"} <= names
    merges_lines = (CLIP_TOKENIZER_DIR / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges_lines[0] == "#version: 0.2"
    assert len(merges_lines) - 1 == build_script.NUM_MERGES == 48894


def test_bytes_to_unicode_is_a_bijection(build_script: ModuleType) -> None:
    table = build_script.bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256
    assert table[ord("a")] == "a" and table[ord(" ")] == "Ġ"


def test_script_rebuilds_the_shipped_files(build_script: ModuleType, tmp_path: Path) -> None:
    merges_text = (CLIP_TOKENIZER_DIR / "merges.txt").read_text(encoding="utf-8")
    # OpenAI's file: a header line, the merges, then more merges CLIP does not use.
    bpe_text = '"bpe_simple_vocab_16e6.txt#version: 0.2\n' + merges_text.split("\n", 1)[1] + "x y\nz w\n"
    source = tmp_path / build_script.BPE_FILE_NAME
    source.write_bytes(gzip.compress(bpe_text.encode("utf-8")))
    out = tmp_path / "out"
    build_script.write_tokenizer(build_script.read_bpe_gz_bytes(source), out)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        assert (out / name).read_text(encoding="utf-8") == (CLIP_TOKENIZER_DIR / name).read_text(encoding="utf-8")
    vocab = json.loads((out / "vocab.json").read_text(encoding="utf-8"))
    assert (vocab["!"], vocab["!</w>"], vocab["<|startoftext|>"], vocab["<|endoftext|>"]) == (0, 256, 49406, 49407)
    assert CLIPTokenizer.from_pretrained(str(out)).encode("a photo of a cat")[1:-1] == [320, 1125, 539, 320, 2368]


def test_script_rejects_other_files(build_script: ModuleType, tmp_path: Path) -> None:
    other = tmp_path / "vocab.txt"
    other.write_text("nothing", encoding="utf-8")
    with pytest.raises(ValueError, match="vocab.txt"):
        build_script.read_bpe_gz_bytes(other)


def test_script_rejects_short_bpe_file(build_script: ModuleType) -> None:
    with pytest.raises(ValueError, match="48894"):
        build_script.parse_merges(gzip.compress(b"header\ni n\nt h\n"))
