"""PIE-Bench folder reading: run-length masks (hand-worked), prompts, per-case errors, case selection."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from sdtoolkit.core.errors import UsageError
from sdtoolkit.jobs.pie_data import (CaseError, bracketed_words, decode_mask, encode_mask, load_benchmark,
                                           remove_brackets, select_cases)


def test_decode_mask_hand_worked_runs_and_border_rule_of_pie_bench_evaluator():
    """PIE-Bench's mask_decode: (start, length) runs over the flattened image, then the border set to 1."""
    mask = decode_mask([6, 2, 12, 1], (4, 5))  # pixels 6, 7 (row 1, cols 1-2) and 12 (row 2, col 2)
    expected = np.array([
        [1, 1, 1, 1, 1],
        [1, 1, 1, 0, 1],
        [1, 0, 1, 0, 1],
        [1, 1, 1, 1, 1],
    ], dtype=float)
    np.testing.assert_array_equal(mask, expected)
    assert mask.dtype == np.float64


def test_decode_mask_clips_a_run_past_the_end_and_accepts_overlaps():
    mask = decode_mask([7, 100, 6, 3], (3, 4))  # 7..11 (clipped at 12 pixels) and 6..8 overlapping
    inner = mask[1, 1:3]
    np.testing.assert_array_equal(inner, [0, 1])  # pixel 5 untouched, pixel 6 set
    assert mask.sum() == 12 - 1  # every pixel but (1, 1)


def test_decode_mask_default_is_pie_bench_512():
    assert decode_mask([], ).shape == (512, 512)
    assert decode_mask([]).sum() == 4 * 512 - 4  # only the border


def test_encode_then_decode_round_trips_up_to_the_border():
    rng = np.random.default_rng(0)
    mask = rng.random((9, 11)) > 0.6
    pairs = encode_mask(mask)
    bordered = mask.copy()
    bordered[[0, -1], :] = True
    bordered[:, [0, -1]] = True
    np.testing.assert_array_equal(decode_mask(pairs, mask.shape), bordered.astype(float))
    assert encode_mask(np.zeros((3, 3))) == []
    assert encode_mask(np.ones((2, 3))) == [0, 6]


def test_brackets():
    assert remove_brackets("a [red] [big dog]") == "a red big dog"
    assert bracketed_words("a [red] [big dog] on a mat") == ("red", "big dog")


def _folder(tmp_path, items: dict, size: int = 16) -> None:
    (tmp_path / "annotation_images" / "t").mkdir(parents=True)
    for key, item in items.items():
        if item.get("image_path", "").startswith("t/") and not item.pop("_no_image", False):
            Image.new("RGB", (size, size), (10, 20, 30)).save(tmp_path / "annotation_images" / item["image_path"])
    (tmp_path / "mapping_file.json").write_text(json.dumps(items))


def _item(key: str, **over) -> dict:
    item = {"image_path": f"t/{key}.png", "original_prompt": "a [cat] on a mat", "editing_prompt": "a [dog] on a mat",
            "editing_instruction": "make it a dog", "editing_type_id": "1", "blended_word": "cat dog",
            "mask": [17, 3]}
    item.update(over)
    return item


def test_load_benchmark_reads_good_cases_and_names_every_bad_one(tmp_path):
    _folder(tmp_path, {
        "good": _item("good"),
        "noimage": _item("noimage", _no_image=True),
        "oddmask": _item("oddmask", mask=[1, 2, 3]),
        "outside": _item("outside", mask=[16 * 16, 1]),
        "brackets": _item("brackets", editing_prompt="a [dog on a mat"),
        "type": _item("type", editing_type_id="12"),
        "field": {"image_path": "t/field.png"},
    })
    bench = load_benchmark(tmp_path)
    assert [c.key for c in bench.cases] == ["good"]
    messages = {f.key: f.message for f in bench.failures}
    assert set(messages) == {"noimage", "oddmask", "outside", "brackets", "type", "field"}
    for key, message in messages.items():
        assert message.startswith(f"case {key}:")
    assert "does not exist" in messages["noimage"]
    assert "malformed mask" in messages["oddmask"] and "odd number" in messages["oddmask"]
    assert "outside the 16x16 image" in messages["outside"]
    assert "'[' without ']'" in messages["brackets"]
    assert "editing_type_id '12'" in messages["type"]
    assert "missing field(s)" in messages["field"]
    case = bench.cases[0]
    assert case.source_prompt == "a cat on a mat" and case.target_prompt == "a dog on a mat"
    assert case.source_words == ("cat",) and case.target_words == ("dog",)
    assert case.image_size == (16, 16) and case.mask().shape == (16, 16)
    assert case.mask()[1, 1:4].tolist() == [1, 1, 1]  # pixels 17, 18, 19
    assert case.blend_words() == (("cat",), ("dog",))


def test_blend_word_not_in_prompt_names_the_case(tmp_path):
    _folder(tmp_path, {"k1": _item("k1", blended_word="cat tiger"), "k2": _item("k2", blended_word="cat")})
    first, second = load_benchmark(tmp_path).cases
    with pytest.raises(CaseError, match=r"case k1: blended word 'tiger' is not in the editing prompt"):
        first.blend_words()
    with pytest.raises(CaseError, match=r"case k2: .* is not two words"):
        second.blend_words()


def test_missing_mapping_file_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="no mapping_file.json"):
        load_benchmark(tmp_path)
    (tmp_path / "mapping_file.json").write_text("[1, 2]")
    with pytest.raises(UsageError, match="must be a JSON object"):
        load_benchmark(tmp_path)


def test_select_cases_by_type_and_range(tmp_path):
    _folder(tmp_path, {f"k{i}": _item(f"k{i}", editing_type_id=str(i % 3)) for i in range(6)})
    cases = load_benchmark(tmp_path).cases
    assert [c.key for c in select_cases(cases, ["0", "2"])] == ["k0", "k2", "k3", "k5"]
    assert [c.key for c in select_cases(cases, None, start=2, end=4)] == ["k2", "k3"]
    assert [c.key for c in select_cases(cases, ["1"], start=2)] == ["k4"]
    with pytest.raises(UsageError, match="'x' is not an editing type"):
        select_cases(cases, ["x"])
