"""The shipped data CSVs: the reference's schema, existing example images, consistent blend words."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA = REPO_ROOT / "data"
PROMPT_COLUMNS = ["case_number", "prompt", "image_path", "url"]
EDIT_COLUMNS = PROMPT_COLUMNS + ["target", "blend_word", "eq_params", "tau_v", "tau_c", "tau_s", "tau_u", "edit_type"]
PROMPT_CSVS = ("stylediffusion_prompts.csv", "stylediffusion_prompts_1word.csv")
EDIT_CSVS = ("stylediffusion_editing.csv", "stylediffusion_editing_1word.csv")


def words(text: str) -> list[str]:
    """Lowercase words of a text, punctuation stripped."""
    return re.sub(r"[^\w\s]", " ", text.lower()).split()


def read(name: str) -> pd.DataFrame:
    """A data CSV as the reference scripts read it, with its leading unnamed index column."""
    return pd.read_csv(DATA / name, index_col=0, keep_default_na=False)


@pytest.mark.parametrize("name", PROMPT_CSVS + EDIT_CSVS)
def test_schema_and_images(name: str) -> None:
    header = (DATA / name).read_text(encoding="utf-8").splitlines()[0].split(",")
    expected = EDIT_COLUMNS if name in EDIT_CSVS else PROMPT_COLUMNS
    assert header == [""] + expected
    table = read(name)
    assert len(table) >= 1
    assert table["case_number"].is_unique and pd.api.types.is_integer_dtype(table["case_number"])
    for image_path in table["image_path"]:
        assert image_path.startswith("./example_images/")
        file = REPO_ROOT / image_path
        assert file.is_file(), file
        with Image.open(file) as image:
            assert image.mode == "RGB"


@pytest.mark.parametrize("suffix", ["", "_1word"])
def test_prompt_and_editing_csvs_agree(suffix: str) -> None:
    prompts, edits = read(f"stylediffusion_prompts{suffix}.csv"), read(f"stylediffusion_editing{suffix}.csv")
    pd.testing.assert_frame_equal(prompts, edits[PROMPT_COLUMNS])


@pytest.mark.parametrize("name", EDIT_CSVS)
def test_edit_parameters(name: str) -> None:
    for _, row in read(name).iterrows():
        source_words, target_words = ast.literal_eval(row["blend_word"])
        assert set(map(str.lower, source_words)) <= set(words(row["prompt"])), row["blend_word"]
        assert set(map(str.lower, target_words)) <= set(words(row["target"])), row["blend_word"]
        eq_words, eq_values = ast.literal_eval(row["eq_params"])
        assert len(eq_words) == len(eq_values) and set(eq_words) <= set(words(row["target"]))
        for column in ("tau_v", "tau_c", "tau_s", "tau_u"):
            taus = ast.literal_eval(row[column])
            assert isinstance(taus, list) and taus and all(0 <= tau <= 1 for tau in taus)
        assert row["edit_type"] in {"Replacement", "Refinement", "StoreAttn"}
        if "_1word" in name:
            assert len(words(row["prompt"])) == len(words(row["target"])) == 1


def test_full_sentence_editing_has_refinement() -> None:
    assert "Refinement" in set(read("stylediffusion_editing.csv")["edit_type"])


def test_example_images_are_small_and_documented() -> None:
    readme = (REPO_ROOT / "example_images" / "README.md").read_text(encoding="utf-8")
    images = sorted((REPO_ROOT / "example_images").glob("*.jpg"))
    assert len(images) >= 4
    for image in images:
        assert image.stat().st_size < 200 * 1024, image
        assert f"`{image.name}`" in readme, image.name
