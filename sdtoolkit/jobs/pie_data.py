"""PIE-Bench folders as published: the mapping file, its run-length masks and its annotation images.

A PIE-Bench folder (the benchmark of the PnPInversion paper, Ju et al. 2023) holds
``mapping_file.json`` and ``annotation_images/``. Each key of the mapping file is one case::

    "000000000000": {
        "image_path": "0_random_140/000000000000.jpg",      # under annotation_images/
        "original_prompt": "a slanted [mountain bicycle] on the road in front of a building",
        "editing_prompt": "a slanted [rusty] mountain bicycle on the road in front of a building",
        "editing_instruction": "Make the frame of the bike rusty",
        "editing_type_id": "0",                               # "0"-"9", see EDITING_TYPES
        "blended_word": "bicycle bicycle",                    # "" or "<source word> <target word>"
        "mask": [start, length, start, length, ...]           # run-length pairs, see decode_mask
    }

The benchmark's own runner and evaluator read the prompts with the square brackets removed; the
bracketed words are the edited words. :func:`load_benchmark` reads and checks every case once; a bad case
(missing image, malformed mask, unbalanced brackets, unknown editing type) becomes a :class:`CaseFailure`
that names the case, and the other cases stay usable. :func:`select_cases` filters by editing type and
case range (what a runner or the metrics need).

Image size: PIE-Bench images are 512×512 and their masks run over 512·512 pixels. A mask is decoded at
the size of its case's image (read from the image file's header), so the same code reads smaller
folders such as the toy PIE-Bench (``toyworld.pie_bench``, 64×64 images and masks).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from sdtoolkit.core.errors import UsageError
from sdtoolkit.core.paths import check_name, contained

MAPPING_FILE = "mapping_file.json"
IMAGES_DIR = "annotation_images"
OUTPUT_SUFFIX = "+p2p"  # PnPInversion's output folders: {method}+p2p (every method edits with prompt-to-prompt)


def method_folder_name(method: str) -> str:
    """``{method}+p2p``: the folder of one method's outputs, and its columns' prefix in the metrics' CSV."""
    return f"{method}{OUTPUT_SUFFIX}"


def method_dir(output_path: str | Path, method: str) -> Path:
    """``{output_path}/{method}+p2p``: PnPInversion's folder of one method's outputs (the runner writes it, the
    metrics read its ``annotation_images/``)."""
    return Path(output_path) / method_folder_name(method)
PIE_IMAGE_SIZE = 512
EDITING_TYPES: dict[str, str] = {
    "0": "random",
    "1": "change object",
    "2": "add object",
    "3": "delete object",
    "4": "change attribute content",
    "5": "change attribute pose",
    "6": "change attribute color",
    "7": "change attribute material",
    "8": "change background",
    "9": "change style",
}
"""PIE-Bench's editing types by ``editing_type_id``."""
FIELDS = ("image_path", "original_prompt", "editing_prompt", "editing_instruction", "editing_type_id",
          "blended_word", "mask")
_BRACKETED = re.compile(r"\[([^\[\]]*)\]")


class CaseError(ValueError):
    """A case of a PIE-Bench folder that cannot be used; the message names the case and what is wrong."""


# ----------------------------------------------------------------------------------------------------------
# Run-length masks and prompts (pure functions)
# ----------------------------------------------------------------------------------------------------------

def check_mask_pairs(pairs: Any, shape: tuple[int, int]) -> tuple[int, ...]:
    """Validate run-length pairs for an image of ``shape`` (H, W); return them as a tuple of ints.

    Valid: a flat list of an even number of non-negative integers, every start inside the H·W pixels.
    A run longer than the pixels left after its start is accepted and clipped there (as PIE-Bench's own
    decoder does), so any run length fits the decoder's integers. Raises ValueError saying what is wrong.
    """
    if not isinstance(pairs, (list, tuple)):
        raise ValueError(f"mask must be a list of run-length pairs, got {type(pairs).__name__}")
    if len(pairs) % 2:
        raise ValueError(f"mask has an odd number of values ({len(pairs)}): expected (start, length) pairs")
    bad = [v for v in pairs if isinstance(v, bool) or not isinstance(v, (int, np.integer))]
    if bad:
        raise ValueError(f"mask values must be integers, found {bad[0]!r}")
    length = shape[0] * shape[1]
    for i in range(0, len(pairs), 2):
        start, run = int(pairs[i]), int(pairs[i + 1])
        if start < 0 or run < 0:
            raise ValueError(f"mask pair {i // 2} ({start}, {run}) is negative")
        if start >= length:
            raise ValueError(f"mask pair {i // 2} starts at {start}, outside the {shape[0]}x{shape[1]} image "
                             f"({length} pixels)")
    starts = [int(v) for v in pairs[0::2]]
    return tuple(v for start, run in zip(starts, pairs[1::2]) for v in (start, min(int(run), length - start)))


def decode_mask(pairs: Sequence[int], shape: tuple[int, int] = (PIE_IMAGE_SIZE, PIE_IMAGE_SIZE),
                border: bool = True) -> np.ndarray:
    """The (H, W) float mask (1 = edited region) of run-length ``pairs``, as PIE-Bench's evaluator decodes it.

    ``pairs`` is (start, length, start, length, ...) over the row-major flattened H·W image; a run is
    clipped at the last pixel. Then the image border (first/last row and column) is set to 1, as the
    benchmark does "to avoid annotation errors in boundary" (``border=False``: not, for exact masks such as
    the toy world's ground truth). Values are float64 0/1.
    """
    height, width = shape
    length = height * width
    delta = np.zeros(length + 1, dtype=np.int64)  # +1 at each run's start, -1 one past its end
    starts = np.asarray(pairs[0::2], dtype=np.int64)
    ends = np.minimum(starts + np.asarray(pairs[1::2], dtype=np.int64), length)
    keep = ends > starts
    np.add.at(delta, starts[keep], 1)
    np.add.at(delta, ends[keep], -1)
    mask = (np.cumsum(delta[:length]) > 0).astype(np.float64).reshape(height, width)  # (H*W,) -> (H, W)
    if not border:
        return mask
    mask[0, :] = mask[-1, :] = 1
    mask[:, 0] = mask[:, -1] = 1
    return mask


def encode_mask(mask: np.ndarray) -> list[int]:
    """Run-length pairs (start, length, ...) of the nonzero pixels of an (H, W) mask, row-major.

    The inverse of :func:`decode_mask` up to its border rule: ``decode_mask(encode_mask(m), m.shape)`` is
    ``m`` with the border set to 1.
    """
    flat = np.asarray(mask).reshape(-1) != 0  # (H, W) -> (H*W,)
    edges = np.diff(np.concatenate(([0], flat.astype(np.int8), [0])))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return [int(v) for pair in zip(starts, ends - starts) for v in pair]


def remove_brackets(prompt: str) -> str:
    """The prompt as PIE-Bench's runner and evaluator use it: every '[' and ']' removed."""
    return prompt.replace("[", "").replace("]", "")


def bracketed_words(prompt: str) -> tuple[str, ...]:
    """The bracketed phrases of a prompt, in order: ``"a [red] [round] cat"`` -> ``("red", "round")``."""
    return tuple(match.strip() for match in _BRACKETED.findall(prompt))


def check_brackets(prompt: str) -> None:
    """Raise ValueError unless every '[' is closed by a ']' before the next '[' and no bracket is empty."""
    depth = 0
    for char in prompt:
        if char == "[":
            if depth:
                raise ValueError(f"nested '[' in {prompt!r}")
            depth = 1
        elif char == "]":
            if not depth:
                raise ValueError(f"']' without '[' in {prompt!r}")
            depth = 0
    if depth:
        raise ValueError(f"'[' without ']' in {prompt!r}")
    if any(not word for word in bracketed_words(prompt)):
        raise ValueError(f"empty brackets in {prompt!r}")


def contains_word(prompt: str, word: str) -> bool:
    """Whether ``word`` (one or more words) occurs in ``prompt`` as whole words, ignoring case."""
    return re.search(rf"(?<!\w){re.escape(word.strip())}(?!\w)", prompt, flags=re.IGNORECASE) is not None


# ----------------------------------------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PieCase:
    """One case of a PIE-Bench folder, checked when read (:func:`load_benchmark`)."""

    key: str
    index: int  # position in the mapping file (0-based): case ranges count this
    image_path: str  # relative to annotation_images/
    original_prompt: str  # as written, with [brackets]
    editing_prompt: str
    editing_instruction: str
    editing_type_id: str
    blended_word: tuple[str, ...]  # the mapping's blended_word split on spaces; () when empty
    mask_pairs: tuple[int, ...]
    image_size: tuple[int, int]  # (H, W) of the source image; the mask is decoded at this size

    @property
    def source_prompt(self) -> str:
        """The original prompt without brackets."""
        return remove_brackets(self.original_prompt)

    @property
    def target_prompt(self) -> str:
        """The editing prompt without brackets."""
        return remove_brackets(self.editing_prompt)

    @property
    def source_words(self) -> tuple[str, ...]:
        """The bracketed (edited) words of the original prompt."""
        return bracketed_words(self.original_prompt)

    @property
    def target_words(self) -> tuple[str, ...]:
        """The bracketed (edited) words of the editing prompt."""
        return bracketed_words(self.editing_prompt)

    @property
    def editing_type(self) -> str:
        """The editing type's name, e.g. ``"change attribute color"``."""
        return EDITING_TYPES[self.editing_type_id]

    def mask(self) -> np.ndarray:
        """The decoded (H, W) edit mask at the image's size, border set to 1 (:func:`decode_mask`)."""
        return decode_mask(self.mask_pairs, self.image_size)

    def source_file(self, data_path: str | Path) -> Path:
        """The source image, kept inside ``{data_path}/annotation_images`` (UsageError otherwise)."""
        return contained(Path(data_path) / IMAGES_DIR, self.image_path, "image_path")

    def blend_words(self) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
        """The blended words as a prompt-to-prompt blend pair ``((source,), (target,))``; None when empty.

        Raises CaseError unless ``blended_word`` is two words, the first in the source prompt and the second
        in the target prompt.
        """
        if not self.blended_word:
            return None
        if len(self.blended_word) != 2:
            raise CaseError(f"case {self.key}: blended_word {' '.join(self.blended_word)!r} is not two words "
                            "'<source word> <target word>'")
        source, target = self.blended_word
        for word, prompt, which in ((source, self.source_prompt, "original"), (target, self.target_prompt, "editing")):
            if not contains_word(prompt, word):
                raise CaseError(f"case {self.key}: blended word {word!r} is not in the {which} prompt {prompt!r}")
        return (source,), (target,)

    def bracket_blend_words(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The bracketed words of both prompts as a blend pair; CaseError when a prompt has none."""
        for words, prompt, which in ((self.source_words, self.original_prompt, "original"),
                                     (self.target_words, self.editing_prompt, "editing")):
            if not words:
                raise CaseError(f"case {self.key}: the {which} prompt {prompt!r} has no [bracketed] word")
        return self.source_words, self.target_words


@dataclass(frozen=True)
class CaseFailure:
    """A case that could not be read: its key and the message naming what is wrong."""

    key: str
    message: str


@dataclass(frozen=True)
class PieBenchmark:
    """The readable cases of a PIE-Bench folder, in mapping-file order, and the unreadable ones."""

    root: Path
    cases: tuple[PieCase, ...]
    failures: tuple[CaseFailure, ...]


def _image_size(path: Path, key: str) -> tuple[int, int]:
    """(H, W) of an image file from its header; CaseError when missing or unreadable."""
    if not path.is_file():
        raise CaseError(f"case {key}: source image {path} does not exist")
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError) as err:
        raise CaseError(f"case {key}: source image {path} is not a readable image ({err})") from err
    return height, width


def parse_case(key: str, index: int, item: Any, root: Path) -> PieCase:
    """Check one mapping-file entry against the folder ``root``; raise CaseError naming the case."""
    if not isinstance(item, dict):
        raise CaseError(f"case {key}: expected an object with {', '.join(FIELDS)}, got {type(item).__name__}")
    missing = [field for field in FIELDS if field not in item]
    if missing:
        raise CaseError(f"case {key}: missing field(s) {', '.join(missing)}")
    for field in FIELDS[:6]:
        if not isinstance(item[field], str):
            raise CaseError(f"case {key}: {field} must be a string, got {item[field]!r}")
    type_id = item["editing_type_id"]
    if type_id not in EDITING_TYPES:
        raise CaseError(f"case {key}: editing_type_id {type_id!r} is not one of {', '.join(EDITING_TYPES)}")
    for field in ("original_prompt", "editing_prompt"):
        try:
            check_brackets(item[field])
        except ValueError as err:
            raise CaseError(f"case {key}: {field}: {err}") from None
        if not remove_brackets(item[field]).strip():
            raise CaseError(f"case {key}: {field} is empty")
    try:
        check_name(str(key), "case key")
        check_name(f"{key}.json", "case key")
        source = contained(root / IMAGES_DIR, item["image_path"], "image_path")
    except UsageError as err:
        raise CaseError(f"case {key}: {err}") from None
    image_size = _image_size(source, key)
    try:
        pairs = check_mask_pairs(item["mask"], image_size)
    except ValueError as err:
        raise CaseError(f"case {key}: malformed mask: {err}") from None
    return PieCase(
        key=str(key), index=index, image_path=item["image_path"], original_prompt=item["original_prompt"],
        editing_prompt=item["editing_prompt"], editing_instruction=item["editing_instruction"],
        editing_type_id=type_id, blended_word=tuple(item["blended_word"].split()), mask_pairs=pairs,
        image_size=image_size,
    )


def load_benchmark(data_path: str | Path) -> PieBenchmark:
    """Read ``data_path/mapping_file.json`` and check every case.

    Raises UsageError when the folder or its mapping file is missing or is not a JSON object; an
    unusable case becomes a :class:`CaseFailure` and the others are returned.
    """
    root = Path(data_path)
    mapping_path = root / MAPPING_FILE
    if not root.is_dir():
        raise UsageError(f"--data_path {root}: no such folder (expected a PIE-Bench folder with {MAPPING_FILE})")
    if not mapping_path.is_file():
        raise UsageError(f"--data_path {root}: no {MAPPING_FILE} in it (expected a PIE-Bench folder)")
    try:
        mapping = json.loads(mapping_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"{mapping_path} is not valid JSON: {err}") from None
    if not isinstance(mapping, dict):
        raise UsageError(f"{mapping_path} must be a JSON object of cases keyed by id, got {type(mapping).__name__}")
    cases, failures = [], []
    for index, (key, item) in enumerate(mapping.items()):
        try:
            cases.append(parse_case(key, index, item, root))
        except CaseError as err:
            failures.append(CaseFailure(str(key), str(err)))
    return PieBenchmark(root=root, cases=tuple(cases), failures=tuple(failures))


def check_editing_types(type_ids: Iterable[str]) -> tuple[str, ...]:
    """Validate editing type ids ("0"-"9"); UsageError naming the bad one and the valid ones."""
    ids = tuple(str(t) for t in type_ids)
    bad = [t for t in ids if t not in EDITING_TYPES]
    if bad:
        valid = ", ".join(f"{k} ({v})" for k, v in EDITING_TYPES.items())
        raise UsageError(f"--edit_category_list {bad[0]!r} is not an editing type; valid: {valid}")
    return ids


def select_cases(cases: Sequence[PieCase], editing_types: Iterable[str] | None = None, start: int = 0,
                 end: int | None = None) -> list[PieCase]:
    """Cases of the given editing types whose mapping-file position is in [start, end) (end None: to the last)."""
    types = None if editing_types is None else set(check_editing_types(editing_types))
    if start < 0 or (end is not None and end < start):
        raise UsageError(f"case range [{start}, {end}) is empty or negative; expected 0 <= start <= end")
    return [case for case in cases
            if (types is None or case.editing_type_id in types)
            and case.index >= start and (end is None or case.index < end)]
