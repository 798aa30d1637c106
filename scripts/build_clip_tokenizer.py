"""Build the shipped CLIP BPE tokenizer (Hugging Face CLIPTokenizer format).

Reads OpenAI CLIP's ``bpe_simple_vocab_16e6.txt.gz`` (as shipped inside the
``open_clip_torch`` wheel, whose path may be given instead) and writes
``vocab.json``, ``merges.txt``, ``tokenizer_config.json`` and
``special_tokens_map.json`` exactly as OpenAI CLIP builds its vocabulary.

Usage::

    pip download --no-deps open_clip_torch -d /tmp/oc
    python scripts/build_clip_tokenizer.py /tmp/oc/open_clip_torch-*.whl
"""

from __future__ import annotations

import argparse
import gzip
import json
import zipfile
from pathlib import Path

BPE_FILE_NAME = "bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
MODEL_MAX_LENGTH = 77
DEFAULT_OUT_DIR = Path(__file__).resolve().parent.parent / "sdtoolkit" / "core" / "clip_tokenizer"


def bytes_to_unicode() -> dict[int, str]:
    """Return CLIP/GPT-2's reversible map from byte values to printable unicode characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(code) for code in codes)))


def read_bpe_gz_bytes(path: Path) -> bytes:
    """Return the gzip bytes of the BPE file, from the ``.txt.gz`` itself or from a wheel holding it."""
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as wheel:
            members = [name for name in wheel.namelist() if name.endswith("/" + BPE_FILE_NAME)]
            if not members:
                raise ValueError(f"wheel {path} holds no {BPE_FILE_NAME}; expected an open_clip_torch wheel")
            return wheel.read(members[0])
    if path.name.endswith(".gz"):
        return path.read_bytes()
    raise ValueError(f"unsupported input {path}: expected {BPE_FILE_NAME} or an open_clip_torch .whl")


def parse_merges(gz_bytes: bytes) -> list[tuple[str, str]]:
    """Return the merge pairs CLIP uses: lines[1 : 49152 - 256 - 2 + 1] of the BPE file."""
    lines = gzip.decompress(gz_bytes).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    if len(merges) != NUM_MERGES or any(len(pair) != 2 for pair in merges):
        raise ValueError(f"BPE file does not hold {NUM_MERGES} merge pairs after its header line")
    return [(first, second) for first, second in merges]


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """Return CLIP's vocabulary: bytes, bytes + '</w>', joined merges, then BOS and EOS."""
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [char + "</w>" for char in byte_chars]
    tokens += ["".join(pair) for pair in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    return {token: index for index, token in enumerate(tokens)}


def tokenizer_config() -> dict[str, object]:
    """Return the ``tokenizer_config.json`` content for CLIPTokenizer."""
    return {
        "tokenizer_class": "CLIPTokenizer",
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": EOS_TOKEN,
        "unk_token": EOS_TOKEN,
        "model_max_length": MODEL_MAX_LENGTH,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
        "model_input_names": ["input_ids", "attention_mask"],
    }


def special_tokens_map() -> dict[str, str]:
    """Return the ``special_tokens_map.json`` content."""
    return {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "pad_token": EOS_TOKEN, "unk_token": EOS_TOKEN}


def write_tokenizer(gz_bytes: bytes, out_dir: Path) -> None:
    """Write the four tokenizer files built from the BPE file's bytes into ``out_dir``."""
    merges = parse_merges(gz_bytes)
    vocab = build_vocab(merges)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False) + "\n", encoding="utf-8")
    merges_text = "#version: 0.2\n" + "".join(f"{first} {second}\n" for first, second in merges)
    (out_dir / "merges.txt").write_text(merges_text, encoding="utf-8")
    for name, content in (("tokenizer_config.json", tokenizer_config()), ("special_tokens_map.json", special_tokens_map())):
        (out_dir / name).write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")


def main() -> None:
    """Parse the command line and write the tokenizer files."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help=f"path of {BPE_FILE_NAME} or of an open_clip_torch wheel")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT_DIR, help="output folder")
    args = parser.parse_args()
    write_tokenizer(read_bpe_gz_bytes(args.source), args.out)
    print(f"wrote CLIP tokenizer files to {args.out}")


if __name__ == "__main__":
    main()
