"""benchmarks/pie_table.py: every method of PIE-Bench's table run at its setting and scored beside the published
numbers, on the toy PIE-Bench with the tiny model (T = 2, 1 inner step) and tiny random-weight metric backbones."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from sdtoolkit.cli.pie_table import console, main
from sdtoolkit.core.settings import InversionMethod, Schedule
from sdtoolkit.evaluation.pie_metrics import TABLE_UNITS
from sdtoolkit.evaluation.pie_table import (NOT_COMPARABLE, TABLE_METHODS, load_published, pass_seconds,
                                            planned_passes, published_setting, setting_changes)
from toyworld.pie_bench import write_toy_pie_bench

FAST = ["--model", "tiny", "--device", "cpu", "--num_ddim_steps", "2", "--num_inner_steps", "1",
        "--offline_random_weights", "--random_size", "tiny", "--quiet"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """Three toy cases (colour, shape and background edits of one held-out scene), 32 px."""
    path = tmp_path_factory.mktemp("toy_pie")
    write_toy_pie_bench(path, n=1, seed=0, size=32)
    return path


def test_every_method_is_tabulated_beside_its_published_row_and_a_rerun_reproduces_the_table(toy, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--data_path", str(toy), "--output_path", str(out), "--end_case", "1", *FAST]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"plan: {len(TABLE_METHODS)} method(s) x 1 case(s) on cpu" in printed
    assert "estimated from its first case" in printed and "first case" in printed
    table = pd.read_csv(out / "table.csv")
    rows = table[table["editing type"] == "all"].set_index("method")
    assert list(rows.index) == [m.value for m in TABLE_METHODS]
    assert len(table) == 2 * len(TABLE_METHODS)  # "all" and the case's editing type
    for label, _ in TABLE_UNITS.values():
        assert rows[f"{label} measured"].notna().all()
        with_row = rows[f"{label} published"].notna()
        diff = rows[f"{label} measured"] - rows[f"{label} published"]
        assert (rows.loc[with_row, f"{label} difference"] - diff[with_row]).abs().max() < 1e-9
    assert rows.loc["ddim", "PSNR published"] == 17.87 and rows.loc["directinversion", "PSNR published"] == 27.22
    assert math.isnan(rows.loc["edict", "PSNR published"]) and rows.loc["edict", "published row"].startswith("no published row")
    for method in TABLE_METHODS:  # the counted passes are the plan's formula (1 inner step: no early stop)
        assert rows.loc[method.value, "UNet passes / image"] == planned_passes(method, 2, 1, 1, Schedule.REFERENCE).total
        assert rows.loc[method.value, "seconds / image"] > 0
    assert rows.loc["ddim", "setting"] == "NOT at the published setting: num_ddim_steps=2"
    assert rows.loc["nulltext", "setting"] == "NOT at the published setting: num_ddim_steps=2, num_inner_steps=1"
    assert (rows["track"] == "mask-free").all() and (rows["weights"] == rows.loc["ddim", "weights"]).all()
    assert rows["versions"].str.contains("torch").all() and (rows["seed"] == 0).all()
    assert not rows["comparable with the published table"].any()
    markdown = (out / "table.md").read_text()
    assert NOT_COMPARABLE in markdown and "2310.01506" in markdown
    before = {name: (out / name).read_bytes() for name in ("table.md", "table.csv")}

    assert main(argv) == 0  # resumed: every case skipped, the same table
    assert capsys.readouterr().out.count("0 done, 1 skipped, 0 failed of 1 cases") == len(TABLE_METHODS)
    assert {name: (out / name).read_bytes() for name in before} == before


def test_max_hours_stops_between_cases_and_scores_what_is_done(toy, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["--data_path", str(toy), "--output_path", str(out), "--methods", "ddim", "npi", "--end_case", "2",
                 "--max_hours", "1e-9", *FAST]) == 0
    printed = capsys.readouterr().out
    assert "stopped between cases: 1 case(s) not run" in printed and "npi: not started" in printed
    assert len(list((out / "ddim+p2p" / "annotation_images").rglob("*.png"))) == 1
    assert not (out / "npi+p2p").exists()
    rows = pd.read_csv(out / "table.csv").set_index(["method", "editing type"])
    assert rows.loc[("ddim", "all"), "cases"] == 2 and rows.loc[("ddim", "all"), "scored"] == 1
    assert rows.loc[("npi", "all"), "scored"] == 0 and rows.loc[("npi", "all"), "weights"] == "not run"


@pytest.mark.parametrize("extra, message", [
    (["--methods", "ddim", "nope"], "invalid choice: 'nope'"),
    (["--random_size", "tiny"], "--random_size only applies with --offline_random_weights"),
    (["--offline_random_weights", "--dino_model", "my/dino"], "conflicts with --dino_model"),
    (["--max_hours", "0"], "--max_hours 0.0 must be > 0"),
    (["--from_case", "2", "--end_case", "1"], "select no case"),
    (["--num_ddim_steps", "0"], "must be >= 1"),
])
def test_bad_input_is_one_line_exit_2_before_anything_runs(toy, tmp_path, capsys, extra, message):
    try:
        status = console(["--data_path", str(toy), "--output_path", str(tmp_path / "out"), *extra])
    except SystemExit as exc:  # argparse's own refusals
        status = exc.code
    err = capsys.readouterr().err
    assert status == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_missing_data_path_is_one_line_exit_2(tmp_path, capsys):
    assert console(["--data_path", str(tmp_path / "missing"), "--output_path", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "missing" in err and len(err.strip().splitlines()) == 1


def test_published_numbers_are_data_citing_their_table_and_every_method_has_a_row_or_says_why():
    sources, rows = load_published()
    assert set(rows) == set(InversionMethod)
    for method in ("ddim", "nulltext", "npi", "stylediffusion", "directinversion"):
        assert rows[method].row and set(rows[method].values) == set(TABLE_UNITS) and "2310.01506" in rows[method].source
    for method in ("editfriendly", "edict", "proxnpi", "stylediffusion_direct", "textinv"):
        assert rows[method].row is None and rows[method].note and not rows[method].values
    assert rows["stylediffusion"].values["structure_distance"] == 11.65  # PnPInversion Table 1, StyleD + P2P


def test_published_settings_and_which_overrides_leave_them():
    assert published_setting(InversionMethod.EDICT)["guidance_scale"] == 3.0
    assert published_setting(InversionMethod.NULLTEXT)["num_inner_steps"] == 10
    assert published_setting(InversionMethod.STYLEDIFFUSION)["num_inner_steps"] == 100
    assert {published_setting(m)["num_ddim_steps"] for m in InversionMethod} == {50}
    assert setting_changes(InversionMethod.DDIM, {"num_inner_steps": 5, "schedule": "fast"}) == {}
    assert setting_changes(InversionMethod.NULLTEXT, {"num_inner_steps": 5}) == {"num_inner_steps": 5}
    assert setting_changes(InversionMethod.EDICT, {"guidance_scale": 3.0, "track": None}) == {}
    assert setting_changes(InversionMethod.EDICT, {"track": "mask-allowed"}) == {"track": "mask-allowed"}


def test_planned_passes_at_t50_are_docs_method_9_6():
    """Inversion + reconstruction figures (plain DDIM's 2T and the method's own) + edit: T + 4T for one-pass methods;
    edit-friendly skips 12 of 50 steps, EDICT 10 (2 and 4 passes per step); training at its cap, StyleDiffusion
    Σ⌈100·e^(−0.1 i)⌉ = 1071 iterations, null-text 10 per step, plus 2 passes per step."""
    ref = Schedule.REFERENCE
    assert planned_passes(InversionMethod.DIRECT, 50, 100, 1, ref).describe() == "50 + 200 + 100"
    assert planned_passes(InversionMethod.EDIT_FRIENDLY, 50, 100, 1, ref).describe() == "126 + 176 + 76"
    assert planned_passes(InversionMethod.EDICT, 50, 100, 1, ref).describe() == "210 + 260 + 160"
    assert planned_passes(InversionMethod.STYLEDIFFUSION, 50, 100, 1, ref).describe() == "50 + 1171 + 200 + 100"
    assert planned_passes(InversionMethod.NULLTEXT, 50, 10, 2, ref).training == 1000
    assert pass_seconds("NVIDIA H100 80GB HBM3", "bf16") is not None and pass_seconds("cpu", "fp32") is None
