"""The CSV workflow end to end on the tiny model: train → edit → storemask → NS-LPIPS, skipping, failing rows,
usage errors, prompts that look like shell code, the two-process split and the storemask masks.

Runs are kept small (tiny model, ``--num_inner_steps 1 --num_ddim_steps 4``, 2–4 rows). Whole-program runs
go through ``sys.executable`` subprocesses in a temporary folder; the cheaper checks call the drivers'
``main`` in process through :func:`sdtoolkit.cli.run_main`, the same path as the scripts' ``__main__``.
"""
from __future__ import annotations

import csv
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from unittest.mock import ANY

import numpy as np
import pytest
import torch
from PIL import Image

from sdtoolkit.cli import stylediffusion_csv
from sdtoolkit.cli import storemask as storemask_cli
from sdtoolkit.evaluation import storemask
from sdtoolkit.jobs.cases import read_cases
from sdtoolkit.cli import flags as cli

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data"
IMAGES = REPO / "example_images"
FAST = ["--model", "tiny", "--num_inner_steps", "1", "--num_ddim_steps", "4", "--device", "cpu"]
EVIL_PROMPT = "a cat's \"toy\"; touch PWNED; $(touch PWNED2) `touch PWNED3`"


# ----------------------------------------------------------------------------------------------- helpers

def data_rows(name: str, cases: list[int]) -> tuple[list[str], list[dict[str, str]]]:
    """Header and the rows of ``data/{name}`` with those case numbers (all columns, as text)."""
    with open(DATA / name, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = {int(r["case_number"]): r for r in reader}
        header = list(reader.fieldnames)
    return header, [dict(rows[c]) for c in cases]


def write_csv(path: Path, header: list[str], rows: list[dict[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    return path


def absolute_images(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """Rows with ``./example_images/x.jpg`` made absolute (the repository's example images)."""
    return [{**r, "image_path": str(REPO / r["image_path"])} for r in rows]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return e


def run_script(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python {args}`` in ``cwd``; the output is kept for the assertions (and shown when one fails)."""
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env(), capture_output=True, text=True,
                          timeout=timeout)
    print(f"$ python {' '.join(args)}\n--- rc {proc.returncode}; stdout:\n{proc.stdout}\n--- stderr (tail):\n"
          f"{proc.stderr[-3000:]}")
    return proc


def run_csv(argv: list[str], capsys) -> tuple[int, str, str]:
    """stylediffusion_csv in process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    rc = cli.run_main(stylediffusion_csv.main, argv)
    out, err = capsys.readouterr()
    print(out, err)
    return rc, out, err


def summary(text: str) -> tuple[int, int, int, int]:
    """(done, skipped, failed, rows) of the single-process summary line."""
    m = re.search(r"^summary: (\d+) done, (\d+) skipped, (\d+) failed of (\d+) rows$", text, re.M)
    assert m, f"no summary line in:\n{text}"
    return tuple(int(g) for g in m.groups())


def summary_table(text: str) -> dict[str, tuple[str, str]]:
    """case → (status, reason) from the table under a single-process summary line."""
    lines = text.splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith("summary: "))
    table = {}
    for line in lines[start + 1:]:
        m = re.match(r"^\s+(\S+)\s{2}(done|skipped|failed)\s+(.*)$", line)
        if not m:
            break
        table[m.group(1)] = (m.group(2), m.group(3))
    return table


def assert_usage_error(rc: int, out: str, err: str, *needles: str) -> str:
    """Exit 2 with exactly one readable line on stderr (no traceback) that contains every needle."""
    assert rc == 2, (rc, out, err)
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err and "Traceback" not in out
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------- 1. the README chain on the tiny model

def test_train_edit_storemask_ns_lpips_chain(tmp_path, monkeypatch, capsys):
    """Training CSV → editing CSV → storemask → ns_lpips as the README writes them; then both CSV runs again
    skip every row. The CSVs keep the shipped relative image paths (``./example_images/…``), resolved
    against the CSV folder's parent (``proj/``), while the commands run in ``tmp_path``."""
    proj = tmp_path / "proj"
    (proj / "example_images").mkdir(parents=True)
    for name in ("cat.jpg", "coffee.jpg"):
        (proj / "example_images" / name).symlink_to(IMAGES / name)
    train_csv = write_csv(proj / "data" / "stylediffusion_prompts.csv", *data_rows("stylediffusion_prompts.csv", [0, 1]))
    header, edit_rows = data_rows("stylediffusion_editing.csv", [0, 1])
    edit_csv = write_csv(proj / "data" / "stylediffusion_editing.csv", header, edit_rows)
    common = [*FAST, "--model_dir", "models"]
    train_args = [str(REPO / "stylediffusion_csv.py"), "--is_train", "True", "--prompts_path", str(train_csv), *common]
    edit_args = [str(REPO / "stylediffusion_csv.py"), "--is_train", "", "--prompts_path", str(edit_csv),
                 "--save_path", "results", *common]

    # training
    proc = run_script(train_args, tmp_path)
    assert proc.returncode == 0
    assert summary(proc.stdout) == (2, 0, 0, 2)
    for case in (0, 1):
        learned = tmp_path / "models" / "model_learnv" / f"model-inner1-epoch1-learnv-[{case}].safetensors"
        assert learned.is_file()
        side = json.loads(learned.with_suffix(".json").read_text(encoding="utf-8"))
        assert side["prompt"] == edit_rows[case]["prompt"]
        assert Path(side["image_path"]).resolve() == (proj / "example_images" / Path(edit_rows[case]["image_path"]).name).resolve()

    # editing: the files of docs/method.md §6 under {save_path}/{csv stem}/{case} {target}/ plus the flat copies
    proc = run_script(edit_args, tmp_path)
    assert proc.returncode == 0
    assert summary(proc.stdout) == (2, 0, 0, 2)
    out = tmp_path / "results" / "stylediffusion_editing"
    stems = {0: "tau_v0.5-tau_c0.6-tau_s0.8-tau_u0.5", 1: "tau_v0.6-tau_c0.6-tau_s0.6-tau_u0.0"}
    for case, row in enumerate(edit_rows):
        folder = out / f"{case} {row['target']}"
        edited = folder / f"edited_img-{stems[case]}.png"
        grid = folder / f"grid_img-{stems[case]}.png"
        for f in (edited, grid, folder / f"edited_img-{stems[case]}.json"):
            assert f.is_file(), f
        with Image.open(edited) as im:
            size = im.size
            assert im.size[0] == im.size[1]
        with Image.open(grid) as im:
            assert im.size[0] >= 4 * size[0]  # input | VAE rec | StyleDiffusion rec | edited
        flat_input = out / "input" / f"{case} {row['prompt']}.png"
        flat_edited = out / "edited" / f"{case} {row['target']}.png"
        assert flat_input.is_file() and flat_edited.is_file()
        assert flat_edited.read_bytes() == edited.read_bytes()
        with Image.open(flat_input) as im:
            assert im.size == size

    # storemask (4 DDIM steps) on the flat inputs
    masks = tmp_path / "masks"
    proc = run_script([str(REPO / "eval_metrics" / "storemask.py"), "--prompts_path", str(edit_csv),
                       "--input_path", str(out / "input"), "--bgmask_path", str(masks / "bg"),
                       "--fgmask_path", str(masks / "fg"), "--model", "tiny", "--num_ddim_steps", "4",
                       "--device", "cpu"], tmp_path)
    assert proc.returncode == 0
    assert "masked 2 of 2 cases" in proc.stdout
    for case, row in enumerate(edit_rows):
        for kind in ("bg", "fg"):
            assert (masks / kind / f"{case} {row['prompt']}.png").is_file()

    # NS-LPIPS (random backbone: no download)
    proc = run_script([str(REPO / "eval_metrics" / "ns_lpips.py"), "--prompts_path", str(edit_csv),
                       "--input_path", str(out / "input"), "--edited_path", str(out / "edited"),
                       "--mask_path", str(masks / "bg"), "--offline_random_weights", "--device", "cpu"], tmp_path)
    assert proc.returncode == 0
    m = re.search(r"NS-LPIPS mean = (\S+)", proc.stdout)
    assert m and np.isfinite(float(m.group(1))) and float(m.group(1)) >= 0
    assert "scored 2 of 2 cases" in proc.stdout

    # second runs of training and editing: every row skipped, exit 0. In process (the scripts' own main and
    # exit-status path, cli.run_main) to spare two interpreter start-ups of ~15 s each on this machine
    monkeypatch.chdir(tmp_path)
    for args in (train_args, edit_args):
        rc, stdout, _ = run_csv(args[1:], capsys)
        assert rc == 0 and summary(stdout) == (0, 2, 0, 2)
        assert summary_table(stdout) == {"0": ("skipped", ANY), "1": ("skipped", ANY)}
        assert stdout.count("skipped (already") == 2


# --------------------------------------------------------------------------- 2. a failing row fails alone

def test_missing_image_fails_alone(tmp_path, monkeypatch, capsys):
    header, rows = data_rows("stylediffusion_prompts.csv", [0, 1])
    rows = absolute_images(rows)
    rows[1]["image_path"] = str(tmp_path / "no-such-image.jpg")
    train_csv = write_csv(tmp_path / "train.csv", header, rows)
    monkeypatch.chdir(tmp_path)
    rc, out, _ = run_csv(["--is_train", "True", "--prompts_path", str(train_csv), *FAST, "--model_dir", "models"], capsys)
    assert rc == 1
    assert summary(out) == (1, 0, 1, 2)
    table = summary_table(out)
    assert table["0"][0] == "done"
    assert table["1"][0] == "failed" and "no-such-image.jpg" in table["1"][1] and "does not exist" in table["1"][1]
    assert (tmp_path / "models" / "model_learnv" / "model-inner1-epoch1-learnv-[0].safetensors").is_file()
    assert not (tmp_path / "models" / "model_learnv" / "model-inner1-epoch1-learnv-[1].safetensors").exists()


# ------------------------------------------------------------------------ 3. bad input: exit 2, one line

def test_missing_column(tmp_path, capsys):
    header, rows = data_rows("stylediffusion_prompts.csv", [0])
    header = [h for h in header if h != "image_path"]
    bad = write_csv(tmp_path / "bad.csv", header, [{k: v for k, v in rows[0].items() if k in header}])
    line = assert_usage_error(*run_csv(["--is_train", "True", "--prompts_path", str(bad), *FAST], capsys),
                              "image_path", "columns found", "case_number", "prompt", "url")
    assert "lacks" in line
    # an editing CSV needs the editing columns too
    header, rows = data_rows("stylediffusion_editing.csv", [0])
    header = [h for h in header if h != "tau_c"]
    bad = write_csv(tmp_path / "bad_edit.csv", header, [{k: v for k, v in rows[0].items() if k in header}])
    assert_usage_error(*run_csv(["--is_train", "", "--prompts_path", str(bad), *FAST], capsys), "tau_c", "columns found")


def test_empty_csv(tmp_path, capsys):
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    assert_usage_error(*run_csv(["--is_train", "True", "--prompts_path", str(empty), *FAST], capsys), "empty")


@pytest.mark.parametrize("body, needle", [
    (b",case_number,prompt,image_path,url\n0,0,a cat, sitting,./example_images/cat.jpg,\n", "more fields than the header"),
    (b",case_number,prompt,image_path,url\n0,0,a cat,./x.jpg,\n1,1,a cat, sitting,./x.jpg,\n", "Expected 5 fields"),
    (b",case_number,prompt,image_path,url\n0,0,\xff\xfe cat,./x.jpg,\n", "not a readable CSV"),
], ids=["unquoted-comma", "ragged-row", "not-utf8"])
def test_malformed_csv(tmp_path, capsys, body, needle):
    bad = tmp_path / "bad.csv"
    bad.write_bytes(body)
    assert_usage_error(*run_csv(["--is_train", "True", "--prompts_path", str(bad), *FAST], capsys), needle)


def test_unparseable_tau_names_the_case(tmp_path, capsys):
    header, rows = data_rows("stylediffusion_editing.csv", [0, 1])
    rows = absolute_images(rows)
    rows[1]["tau_v"] = "[.5,,]"
    bad = write_csv(tmp_path / "edit.csv", header, rows)
    line = assert_usage_error(*run_csv(["--is_train", "", "--prompts_path", str(bad), *FAST,
                                        "--save_path", str(tmp_path / "res")], capsys), "case 1", "tau_v", "[.5,,]")
    assert "case 0" not in line
    assert not (tmp_path / "res").exists()  # rows are parsed before any work starts


def test_case_range_selects_nothing(tmp_path, capsys):
    header, rows = data_rows("stylediffusion_prompts.csv", [0, 1])
    train_csv = write_csv(tmp_path / "train.csv", header, absolute_images(rows))
    assert_usage_error(*run_csv(["--is_train", "True", "--prompts_path", str(train_csv), "--from_case", "10",
                                 "--end_case", "12", *FAST], capsys), "--from_case 10", "--end_case 12", "selects no case")


def test_end_case_is_exclusive_as_the_reference(tmp_path, monkeypatch, capsys):
    """Reference behaviour: rows with from_case <= case_number < end_case run (``--from_case 1 --end_case 2``
    runs case 1 only); the masks and NS-LPIPS read the same range."""
    from sdtoolkit.jobs import invert as invert_job

    header, rows = data_rows("stylediffusion_prompts.csv", [0, 1, 2])
    train_csv = write_csv(tmp_path / "train.csv", header, absolute_images(rows))
    seen = []

    def fake_invert(models, cfg, overwrite=False, progress=True):
        seen.append(cfg.index)
        return invert_job.InvertResult(cfg.path(), trained=False)

    monkeypatch.setattr(invert_job, "invert", fake_invert)
    rc, out, _ = run_csv(["--is_train", "True", "--prompts_path", str(train_csv), "--from_case", "1", "--end_case", "2",
                          *FAST, "--model_dir", str(tmp_path)], capsys)
    assert rc == 0 and seen == ["1"]
    assert summary(out) == (0, 1, 0, 1)
    assert list(read_cases(str(train_csv), ("case_number",), 1, 3)["case_number"]) == ["1", "2"]
    assert list(read_cases(str(train_csv), ("case_number",), None, 1)["case_number"]) == ["0"]


# ----------------------------------------------------------------- 4. prompts are text, never shell code

def test_shell_metacharacters_in_prompt_are_plain_text(tmp_path, monkeypatch, capsys):
    header, rows = data_rows("stylediffusion_prompts.csv", [0])
    rows = absolute_images(rows)
    rows[0]["prompt"] = EVIL_PROMPT
    train_csv = write_csv(tmp_path / "train.csv", header, rows)
    with open(train_csv, newline="", encoding="utf-8") as f:
        assert next(csv.DictReader(f))["prompt"] == EVIL_PROMPT  # csv quoting kept it whole
    monkeypatch.chdir(tmp_path)
    rc, out, _ = run_csv(["--is_train", "True", "--prompts_path", str(train_csv), *FAST, "--model_dir", "models"], capsys)
    assert rc == 0 and summary(out) == (1, 0, 0, 1)
    learned = tmp_path / "models" / "model_learnv" / "model-inner1-epoch1-learnv-[0].safetensors"
    assert learned.is_file()
    assert json.loads(learned.with_suffix(".json").read_text(encoding="utf-8"))["prompt"] == EVIL_PROMPT
    for where in (tmp_path, Path.cwd(), REPO):
        assert not list(where.rglob("PWNED*")), where


# ------------------------------------------------------------------------------- 5. two-process split

def test_two_processes_split_the_rows(tmp_path):
    header, rows = data_rows("stylediffusion_prompts.csv", [0, 1, 2, 3])
    train_csv = write_csv(tmp_path / "train.csv", header, absolute_images(rows))
    proc = run_script(["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                       "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
                       str(REPO / "stylediffusion_csv.py"), "--is_train", "True", "--prompts_path", str(train_csv),
                       *FAST, "--model_dir", "models"], tmp_path)
    assert proc.returncode == 0
    learned = sorted((tmp_path / "models" / "model_learnv").glob("*.safetensors"))
    assert [p.name for p in learned] == [f"model-inner1-epoch1-learnv-[{c}].safetensors" for c in range(4)]
    # each process prints "[process k/2] summary: …" and then its table (indented lines)
    blocks: dict[int, dict[str, str]] = {}
    lines = proc.stdout.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^\[process (\d)/2\] summary: (\d+) done, (\d+) skipped, (\d+) failed of (\d+) rows$", line)
        if not m:
            continue
        k = int(m.group(1))
        assert k not in blocks, f"process {k} printed two summaries"
        table = {}
        for row in lines[i + 1:]:
            r = re.match(r"^\s+(\S+)\s{2}(done|skipped|failed)\s+(.*)$", row)
            if not r:
                break
            table[r.group(1)] = r.group(2)
        assert (int(m.group(2)), int(m.group(4)), int(m.group(5))) == (2, 0, 2), line
        assert set(table.values()) == {"done"} and len(table) == 2, (line, table)
        blocks[k] = table
    assert sorted(blocks) == [1, 2]
    assert not set(blocks[1]) & set(blocks[2])
    assert set(blocks[1]) | set(blocks[2]) == {"0", "1", "2", "3"}


# ------------------------------------------------------------------------------------- 6. storemask unit

def test_attention_mask_range(tiny):
    mask = storemask.attention_mask(tiny, IMAGES / "cat.jpg", "a close-up photo of a cat", ("cat",), num_steps=4)
    assert tuple(mask.shape) == (storemask.MASK_SIZE, storemask.MASK_SIZE) == (256, 256)
    assert float(mask.min()) >= 0.0 and float(mask.max()) <= 1.0
    # the 16×16 map is normalised to max 1 and then resized bilinearly 16×: no output pixel sits exactly on a
    # source pixel centre (nearest is 1/32 px off in x and y), so the max is >= (31/32)² of 1, not exactly 1
    assert float(mask.max()) >= (31 / 32) ** 2 - 1e-6
    assert float(mask.max()) - float(mask.min()) > 0  # not a constant map


def test_reference_mode_background_mask_of_a_hand_made_map():
    """Reference mask script: 255 · map / max, truncated to uint8, resized to 256 by PIL's default (bicubic) on
    the RGB image, background = 255 − foreground."""
    amap = torch.zeros(16, 16)
    amap[4:9, 6:12] = torch.linspace(0.1, 0.7, 30).reshape(5, 6)
    amap[0, 0] = 0.05
    fg, bg = storemask.reference_masks(amap)
    values = 255 * amap.numpy() / 0.7  # float32, as the reference computes it
    u8 = values.astype(np.uint8)  # truncation: 0.1 / 0.7 · 255 = 36.43 → 36
    assert u8[4, 6] == 36 and u8[8, 11] == 255
    expected_fg = np.asarray(Image.fromarray(np.stack([u8] * 3, axis=-1)).resize((256, 256)))
    assert np.array_equal(np.asarray(fg), expected_fg)
    assert np.array_equal(np.asarray(bg), 255 - expected_fg)
    assert fg.size == bg.size == (256, 256) and bg.mode == "RGB"


def test_reference_mode_token_and_heads():
    """Reference mask script: token = index of the first blend word among the space-separated words + 1 (only the
    first word), and its batch-of-one store keeps heads h//2 … h−1 (``attn[h // 2:]``)."""
    from sdtoolkit.control.controllers import AttentionStore
    from sdtoolkit.core.attention import AttnCall, Branch, LayerInfo

    assert storemask.reference_token("a close-up photo of a cat", ("cat", "photo")) == 6
    with pytest.raises(ValueError, match="dog"):
        storemask.reference_token("a close-up photo of a cat", ("dog",))
    layer = LayerInfo(name="down.cross", place="down", is_cross=True, resolution=16)
    probs = torch.arange(8.0).view(1, 8, 1, 1).expand(1, 8, 256, 77).clone()  # head k holds the value k
    for upper, mean in ((True, 5.5), (False, 3.5)):
        store = AttentionStore([layer], upper_heads=upper)
        store.store(probs, layer, AttnCall(0, Branch.COND))
        assert torch.allclose(store.average(), torch.full((1, 16, 16, 77), mean))


def test_storemask_masks_and_failing_case(tmp_path, capsys):
    header, rows = data_rows("stylediffusion_editing.csv", [0, 1])
    rows[1]["blend_word"] = "[('dog',), ('tea',)]"  # "dog" is not in "a cup of coffee on a wooden table"
    edit_csv = write_csv(tmp_path / "edit.csv", header, rows)
    inputs = tmp_path / "input"
    inputs.mkdir()
    for row in rows:
        with Image.open(REPO / row["image_path"]) as im:
            im.convert("RGB").resize((64, 64)).save(inputs / f"{row['case_number']} {row['prompt']}.png")
    capsys.readouterr()
    rc = cli.run_main(storemask_cli.main, ["--prompts_path", str(edit_csv), "--input_path", str(inputs),
                                       "--bgmask_path", str(tmp_path / "bg"), "--fgmask_path", str(tmp_path / "fg"),
                                       "--model", "tiny", "--num_ddim_steps", "4", "--device", "cpu"])
    out, err = capsys.readouterr()
    print(out, err)
    assert rc == 1
    assert "masked 1 of 2 cases (0 missing input, 1 failed)" in out
    assert re.search(r"case 1: failed .*'dog'", out)
    name0, name1 = f"0 {rows[0]['prompt']}.png", f"1 {rows[1]['prompt']}.png"
    assert not (tmp_path / "fg" / name1).exists() and not (tmp_path / "bg" / name1).exists()
    with Image.open(tmp_path / "fg" / name0) as fg_im, Image.open(tmp_path / "bg" / name0) as bg_im:
        assert fg_im.mode == bg_im.mode == "L" and fg_im.size == bg_im.size == (256, 256)
        fg, bg = np.asarray(fg_im, dtype=np.int32), np.asarray(bg_im, dtype=np.int32)
    assert np.abs(fg + bg - 255).max() <= 1
    assert fg.max() >= 240 and fg.min() < fg.max()


def test_storemask_bad_blend_word_names_the_case(tmp_path, capsys):
    header, rows = data_rows("stylediffusion_editing.csv", [0, 1])
    rows[1]["blend_word"] = "[('coffee',), ('tea',)"  # unclosed list
    edit_csv = write_csv(tmp_path / "edit.csv", header, rows)
    capsys.readouterr()
    rc = cli.run_main(storemask_cli.main, ["--prompts_path", str(edit_csv), "--input_path", str(tmp_path),
                                       "--model", "tiny", "--device", "cpu"])
    assert_usage_error(rc, *capsys.readouterr(), "case 1", "--blend_word")


@pytest.mark.parametrize("flag", ["--num_inner_steps", "--num_epoch", "--num_ddim_steps"])
def test_zero_step_counts_are_refused_like_the_single_image_cli(tmp_path, capsys, flag):
    """``--num_inner_steps 0`` once became 100 silently here; now both CLIs refuse it with one message."""
    csv = tmp_path / "train.csv"
    csv.write_text("case_number,prompt,image_path\n1,a cat,example_images/cat.jpg\n")
    argv = ["--is_train", "True", "--prompts_path", str(csv), *FAST, flag, "0"]
    assert_usage_error(*run_csv(argv, capsys), flag, ">= 1")
