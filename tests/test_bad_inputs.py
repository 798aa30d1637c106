"""Every bad input stopped at the door: each CLI on each class of bad input (paths from data that leave their
folder, values out of range, names too long for the file system, output locations that cannot be written, sizes
out of bounds, flags a CLI would ignore) exits 2 with one line naming the value, no traceback, nothing written or
changed under the test's folder, and no model loaded when the check needs none. Then the two behaviours that need
real processes: one writer per result (the race) and resuming over a damaged output."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from sdtoolkit.cli import convert_reference, p2plus, pie_bench, stylediffusion, stylediffusion_csv
from sdtoolkit.cli import flags as cli
from sdtoolkit.core.io import lock_path
from sdtoolkit.cli import ns_lpips, pie_metrics, storemask
from sdtoolkit.jobs.pie_data import check_mask_pairs, decode_mask, encode_mask

REPO = Path(__file__).resolve().parent.parent
CAT = str(REPO / "example_images" / "cat.jpg")
SIZE = 64  # the tiny model's image size
BIG = str(10**23)
LONG = " ".join(["tiger"] * 50)  # 299 bytes: a folder name over the 255-byte limit, 52 CLIP tokens
IN_PROCESS = {"stylediffusion": stylediffusion.main, "csv": stylediffusion_csv.main, "p2plus": p2plus.main,
              "pie_bench": pie_bench.main, "storemask": storemask.main, "convert": convert_reference.main}
SELF_MAPPED = {"ns_lpips": ns_lpips.console, "pie_metrics": pie_metrics.console}  # their console() names the program
EDIT_COLUMNS = ["case_number", "prompt", "image_path", "target", "blend_word", "eq_params", "tau_v", "tau_c", "tau_s",
                "tau_u", "edit_type"]


def _image(path: Path, size: tuple[int, int] = (SIZE, SIZE), seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _csv(path: Path, header: list[str], *rows: list) -> Path:
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return path


def _pie(root: Path, cases: dict[str, str]) -> Path:
    """A PIE-Bench folder whose cases (key -> image_path) point where they say; images written for the
    0_random/ ones."""
    mapping = {}
    for k, (key, image_path) in enumerate(cases.items()):
        if image_path.startswith("0_random/"):
            _image(root / "annotation_images" / image_path, seed=k)
        mapping[key] = {"image_path": image_path, "original_prompt": "a [cat] sitting on a mat",
                        "editing_prompt": "a [dog] sitting on a mat", "editing_instruction": "Turn the cat into a dog",
                        "editing_type_id": "1", "blended_word": "cat dog", "mask": encode_mask(np.eye(SIZE))}
    root.mkdir(parents=True, exist_ok=True)
    (root / "mapping_file.json").write_text(json.dumps(mapping))
    return root


def _nan_pth(path: Path, steps: int = 4) -> Path:
    """A reference-layout .pth (list of per-step ModuleDicts) whose second step holds a NaN weight."""
    width = 8
    nets = [nn.ModuleDict({"conv_start": nn.Conv1d(2, width, 1), "conv_block": nn.Sequential(nn.Sequential(
        nn.Conv1d(width, width, 1), nn.BatchNorm1d(width), nn.LeakyReLU())), "conv_end": nn.Conv1d(width, width, 1)})
        for _ in range(steps)]
    with torch.no_grad():
        nets[1]["conv_end"].weight[0, 0, 0] = float("nan")
    torch.save(nets, path)
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """Everything lives under ``base``: the workspace ``base/a/ws`` (the CLIs' working folder) and nothing else,
    so an escape by ``..`` lands in ``base`` where the snapshot sees it."""
    base = tmp_path_factory.mktemp("bad_inputs")
    ws = base / "a" / "ws"
    ws.mkdir(parents=True)
    _image(ws / "victim" / "victim.png", seed=9)
    _image(ws / "thin.png", size=(1, 4000))
    (ws / "file").write_text("a file where a folder should be")
    (ws / "blocked").mkdir()
    (ws / "blocked" / "model_learnv").write_text("a file where model_learnv/ should be")
    for name in ("in", "edited", "masks", "inputs"):
        (ws / name).mkdir()
    (ws / "pm_out" / "stylediffusion+p2p" / "annotation_images").mkdir(parents=True)
    _pie(ws / "good", {"000000000001": "0_random/1.png"})
    _pie(ws / "escape", {"000000000001": "../../victim/victim.png"})
    _pie(ws / "absolute", {"000000000001": str(ws / "victim" / "victim.png")})
    _pie(ws / "badkey", {"../../x": "0_random/1.png"})
    _pie(ws / "longkey", {"k" * 300: "0_random/1.png"})
    _csv(ws / "train.csv", ["case_number", "prompt", "image_path"], [1, "a cat", CAT])
    _csv(ws / "huge_case.csv", ["case_number", "prompt", "image_path", "target", "blend_word"],
         [1, "a cat", CAT, "a dog", "[('cat',), ('dog',)]"], [10**22, "a cat", CAT, "a dog", "[('cat',), ('dog',)]"])
    edit_row = [1, "a cat", CAT, "a dog", "[('cat',), ('dog',)]", "", "[.5,]", "[.6,]", "[.6,]", "[0.,]", "Replacement"]
    _csv(ws / "edit.csv", EDIT_COLUMNS, edit_row)
    _csv(ws / "long_target.csv", EDIT_COLUMNS, edit_row[:3] + [LONG] + edit_row[4:])
    _csv(ws / "long_prompt.csv", ["case_number", "prompt", "blend_word"], [1, LONG, "[('tiger',), ('dog',)]"])
    _nan_pth(ws / "nan.pth")
    return base


@pytest.fixture(scope="module")
def readonly(base) -> Path:
    """A folder that cannot be written: a read-only kernel file system for root (who ignores permissions), else a
    folder without write permission."""
    if os.geteuid() == 0:
        if not os.path.isdir("/sys") or _writable("/sys"):
            pytest.skip("running as root without a read-only file system to point at")
        return Path("/sys/sdtoolkit-readonly-test")
    folder = base / "readonly"
    folder.mkdir()
    folder.chmod(0o555)
    return folder / "sub"


def _writable(folder: str) -> bool:
    try:
        fd = os.open(os.path.join(folder, ".probe"), os.O_CREAT | os.O_WRONLY)
    except OSError:
        return False
    os.close(fd)
    os.unlink(os.path.join(folder, ".probe"))
    return True


def _snapshot(root: Path) -> dict[str, tuple]:
    """Every file (size, mtime, bytes' hash) and folder under ``root``."""
    out = {}
    for path in root.rglob("*"):
        rel = str(path.relative_to(root))
        out[rel] = ("dir",) if path.is_dir() else (path.stat().st_size, path.stat().st_mtime_ns, hash(path.read_bytes()))
    return out


@pytest.fixture
def loaded(request, monkeypatch) -> list[str]:
    """CLIs in process get the session's tiny model; the list records each load."""
    import sdtoolkit.core.models as models

    calls: list[str] = []

    def load(model, *args, **kwargs):
        calls.append(model)
        return request.getfixturevalue("tiny")

    monkeypatch.setattr(models, "load_models", load)
    return calls


def _run(name: str, argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = SELF_MAPPED[name](argv) if name in SELF_MAPPED else cli.run_main(IN_PROCESS[name], argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


FAST = ["--model", "tiny", "--device", "cpu", "--num_ddim_steps", "4"]


def sd_train(ws: Path, *extra: str) -> list[str]:
    return ["--prompt", "a cat", "--image_path", CAT, *FAST, "--num_inner_steps", "1", "--model_dir",
            str(ws / "models"), *extra]


def sd_edit(ws: Path, *extra: str) -> list[str]:
    return sd_train(ws, "--is_train", "", "--target", "a dog", "--outdir", str(ws / "out"), *extra)


def csv_run(ws: Path, table: str, *extra: str) -> list[str]:
    return ["--prompts_path", str(ws / table), *FAST, "--num_inner_steps", "1", "--model_dir", str(ws / "models"),
            "--save_path", str(ws / "out"), *extra]


def p2p(ws: Path, *extra: str) -> list[str]:
    return ["--prompt", "a cat", "--target", "a dog", "--seed", "[0]", *FAST, "--outdir", str(ws / "out"), *extra]


def pie(ws: Path, data: str = "good", *extra: str) -> list[str]:
    return ["--data_path", str(ws / data), "--output_path", str(ws / "out"), *FAST, "--num_inner_steps", "1", *extra]


def mask(ws: Path, table: str = "edit.csv", *extra: str) -> list[str]:
    return ["--prompts_path", str(ws / table), "--input_path", str(ws / "inputs"), "--fgmask_path",
            str(ws / "out" / "fg"), "--bgmask_path", str(ws / "out" / "bg"), *FAST, *extra]


def lpips(ws: Path, table: str = "edit.csv", *extra: str) -> list[str]:
    return ["--prompts_path", str(ws / table), "--input_path", str(ws / "in"), "--edited_path", str(ws / "edited"),
            "--mask_path", str(ws / "masks"), "--model", "tiny", "--device", "cpu", "--out",
            str(ws / "out" / "ns.csv"), *extra]


def metrics(ws: Path, data: str = "good", *extra: str) -> list[str]:
    return ["--data_path", str(ws / data), "--output_path", str(ws / "pm_out"), "--offline_random_weights",
            "--random_size", "tiny", "--device", "cpu", "--quiet", *extra]


def convert(ws: Path, *extra: str) -> list[str]:
    return [str(ws / "nan.pth"), "--prompt", "a cat", "--image_path", CAT, "--index", "5", *FAST, "--model_dir",
            str(ws / "models"), *extra]


# id: (cli, argv(ws, readonly), fragments the error names, a model may load first, where the error is printed)
R = "READONLY"  # replaced by the read-only folder
TABLE = {
    # paths from data or names that leave their folder
    "sd --index ../../x": ("stylediffusion", lambda w: sd_train(w, "--index", "../../x"), ["--index", "../../x"], 0),
    "sd edit --index ../x": ("stylediffusion", lambda w: sd_edit(w, "--index", "../x"), ["--index", "../x"], 0),
    "convert --index ../../x": ("convert", lambda w: convert(w, "--index", "../../x"), ["--index", "../../x"], 0),
    "pie image_path ../..": ("pie_bench", lambda w: pie(w, "escape"), ["../../victim/victim.png", "outside"], "out"),
    "pie image_path absolute": ("pie_bench", lambda w: pie(w, "absolute"), ["victim.png", "is absolute"], "out"),
    "pie case key ../../x": ("pie_bench", lambda w: pie(w, "badkey"), ["case key", "../../x"], "out"),
    "metrics --methods ../x": ("pie_metrics", lambda w: metrics(w, "good", "--methods", "../x"), ["--methods", "../x"], 0),
    "metrics image_path ../..": ("pie_metrics", lambda w: metrics(w, "escape"), ["../../victim/victim.png", "outside"],
                                 "err+"),
    # values out of range
    "sd guidance nan": ("stylediffusion", lambda w: sd_train(w, "--guidance_scale", "nan"), ["--guidance_scale nan"], 0),
    "sd edit guidance inf": ("stylediffusion", lambda w: sd_edit(w, "--guidance_scale", "inf"), ["--guidance_scale inf"], 0),
    "sd steps 2000": ("stylediffusion", lambda w: sd_train(w, "--num_ddim_steps", "2000"), ["--num_ddim_steps 2000", "1000"], 0),
    "sd seed 10**23": ("stylediffusion", lambda w: sd_train(w, "--seed", BIG), ["--seed", BIG], 0),
    "sd seed -1": ("stylediffusion", lambda w: sd_train(w, "--seed", "-1"), ["--seed -1"], 0),
    "csv case_number 10**22": ("csv", lambda w: csv_run(w, "huge_case.csv"), [str(10**22), "64-bit"], 0),
    "csv guidance nan": ("csv", lambda w: csv_run(w, "train.csv", "--guidance_scale", "nan"), ["--guidance_scale nan"], 0),
    "csv seed 10**23": ("csv", lambda w: csv_run(w, "train.csv", "--seed", BIG), ["--seed", BIG], 0),
    "csv steps 2000": ("csv", lambda w: csv_run(w, "train.csv", "--num_ddim_steps", "2000"), ["--num_ddim_steps 2000"], 0),
    "p2plus seed 10**23": ("p2plus", lambda w: p2p(w, "--seed", f"[{BIG}]"), ["--seed", BIG], 0),
    "p2plus guidance inf": ("p2plus", lambda w: p2p(w, "--guidance_scale", "inf"), ["--guidance_scale inf"], 0),
    "p2plus steps 2000": ("p2plus", lambda w: p2p(w, "--num_ddim_steps", "2000"), ["--num_ddim_steps 2000"], 0),
    "pie guidance nan": ("pie_bench", lambda w: pie(w, "good", "--guidance_scale", "nan"), ["--guidance_scale nan"], 0),
    "pie seed 10**23": ("pie_bench", lambda w: pie(w, "good", "--seed", BIG), ["--seed", BIG], 0),
    "pie steps 2000": ("pie_bench", lambda w: pie(w, "good", "--num_ddim_steps", "2000"), ["--num_ddim_steps 2000"], 0),
    "storemask steps 2000": ("storemask", lambda w: mask(w, "edit.csv", "--num_ddim_steps", "2000"), ["2000"], 0),
    "storemask case_number 10**22": ("storemask", lambda w: mask(w, "huge_case.csv"), [str(10**22)], 0),
    "ns_lpips case_number 10**22": ("ns_lpips", lambda w: lpips(w, "huge_case.csv"), [str(10**22)], 0),
    "convert NaN weights": ("convert", lambda w: convert(w), ["nan.pth", "step 1", "NaN"], 0),
    "convert steps 2000": ("convert", lambda w: convert(w, "--num_ddim_steps", "2000"), ["--num_ddim_steps 2000"], 0),
    # names over the file system's 255 bytes
    "sd edit 50-word target": ("stylediffusion", lambda w: sd_edit(w, "--target", LONG), ["--target", "bytes"], 0),
    "csv 50-word target": ("csv", lambda w: csv_run(w, "long_target.csv", "--is_train", ""), ["case 1", "bytes"], 0),
    "p2plus 50-word target": ("p2plus", lambda w: p2p(w, "--target", LONG), ["--target", "bytes"], 0),
    "storemask 50-word prompt": ("storemask", lambda w: mask(w, "long_prompt.csv"), ["case 1", "bytes"], 0),
    "pie 300-char case key": ("pie_bench", lambda w: pie(w, "longkey"), ["case key", "bytes"], "out"),
    "convert 300-char --index": ("convert", lambda w: convert(w, "--index", "i" * 300), ["--index", "bytes"], 0),
    # output locations that cannot be written, found before any model loads
    "sd --model_dir is a file": ("stylediffusion", lambda w: sd_train(w, "--model_dir", str(w / "file")),
                                 ["--model_dir", "file", "is a file"], 0),
    "sd model_learnv is a file": ("stylediffusion", lambda w: sd_train(w, "--model_dir", str(w / "blocked")),
                                  ["model_learnv", "is a file"], 0),
    "sd --model_dir read-only": ("stylediffusion", lambda w: sd_train(w, "--model_dir", R), ["--model_dir", R], 0),
    "sd --outdir is a file": ("stylediffusion", lambda w: sd_edit(w, "--outdir", str(w / "file")),
                              ["--outdir", "is a file"], 0),
    "sd --outdir read-only": ("stylediffusion", lambda w: sd_edit(w, "--outdir", R), ["--outdir", R], 0),
    "csv --model_dir is a file": ("csv", lambda w: csv_run(w, "train.csv", "--model_dir", str(w / "file")),
                                  ["--model_dir", "is a file"], 0),
    "csv --save_path under a file": ("csv", lambda w: csv_run(w, "edit.csv", "--is_train", "", "--save_path",
                                                             str(w / "file" / "sub")), ["--save_path", "is a file"], 0),
    "p2plus --outdir read-only": ("p2plus", lambda w: p2p(w, "--outdir", R), ["--outdir", R], 0),
    "pie --output_path is a file": ("pie_bench", lambda w: pie(w, "good", "--output_path", str(w / "file")),
                                    ["--output_path", "is a file"], 0),
    "pie --inversion_dir read-only": ("pie_bench", lambda w: pie(w, "good", "--inversion_dir", R), ["--inversion_dir", R], 0),
    "storemask --fgmask_path is a file": ("storemask", lambda w: mask(w, "edit.csv", "--fgmask_path", str(w / "file")),
                                          ["--fgmask_path", "is a file"], 0),
    "ns_lpips --out is a folder": ("ns_lpips", lambda w: lpips(w, "edit.csv", "--out", str(w / "in")),
                                   ["--out", "is a folder"], 0),
    "ns_lpips --out read-only": ("ns_lpips", lambda w: lpips(w, "edit.csv", "--out", f"{R}/ns.csv"), ["--out", R], 0),
    "metrics --result_path read-only": ("pie_metrics", lambda w: metrics(w, "good", "--result_path", f"{R}/m.csv"),
                                        ["--result_path", R], 0),
    "convert --model_dir is a file": ("convert", lambda w: convert(w, "--model_dir", str(w / "file")),
                                      ["--model_dir", "is a file"], 0),
    # sizes
    "sd --resolution 100000": ("stylediffusion", lambda w: sd_train(w, "--resolution", "100000"), ["100000", "2048"], 0),
    "sd --resolution 66": ("stylediffusion", lambda w: sd_train(w, "--resolution", "66"), ["--resolution 66", "64 or 68"], 1),
    "sd --keep_aspect 1x4000": ("stylediffusion", lambda w: sd_train(w, "--image_path", str(w / "thin.png"), "--keep_aspect"),
                                ["thin.png", "1x4000", "4:1"], 0),
    "csv --resolution 100000": ("csv", lambda w: csv_run(w, "train.csv", "--resolution", "100000"), ["100000"], 0),
    "p2plus --resolution 100000": ("p2plus", lambda w: p2p(w, "--resolution", "100000"), ["100000"], 0),
    "p2plus --resolution 66": ("p2plus", lambda w: p2p(w, "--resolution", "66"), ["--resolution 66", "64 or 68"], 1),
    "pie --resolution 100000": ("pie_bench", lambda w: pie(w, "good", "--resolution", "100000"), ["100000"], 0),
    "storemask --resolution 100000": ("storemask", lambda w: mask(w, "edit.csv", "--resolution", "100000"), ["100000"], 0),
    # flags the converter would ignore: refused by its parser
    "convert --resolution": ("convert", lambda w: convert(w, "--resolution", "512"), ["--resolution"], 0),
    "convert --keep_aspect": ("convert", lambda w: convert(w, "--keep_aspect"), ["--keep_aspect"], 0),
    "convert --gradient_checkpointing": ("convert", lambda w: convert(w, "--gradient_checkpointing"),
                                         ["--gradient_checkpointing"], 0),
}


@pytest.mark.parametrize("case", list(TABLE))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case, base, readonly, loaded, capsys, monkeypatch):
    name, build, fragments, mode = TABLE[case]
    ws = base / "a" / "ws"
    monkeypatch.chdir(ws)
    argv = [a.replace(R, str(readonly)) for a in build(ws)]
    fragments = [f.replace(R, str(readonly)) for f in fragments]
    before = _snapshot(base)
    code, out, err = _run(name, argv, capsys)
    assert code == 2, (out[-1500:], err[-1500:])
    assert "Traceback" not in err + out
    lines = err.strip().splitlines()
    if mode == "out":  # a refused PIE-Bench case: named and counted in the run's summary (stdout)
        text = out
        assert len(lines) <= 1, err
    elif mode == "err+":  # pie_metrics lists each unusable case on stderr, then the one error line
        text = err
        assert lines[-1].startswith("pie_metrics: error:") and all(
            line.startswith("failed case:") for line in lines[:-1]), err
    else:
        assert len(lines) == 1, err
        text = lines[0]
    for fragment in fragments:
        assert fragment in text, text
    assert _snapshot(base) == before, "something under the test folder was written or changed"
    if mode != 1:
        assert loaded == [], f"the model was loaded before the bad input was refused: {text}"


def test_a_mask_run_of_any_length_is_clipped_as_pie_bench_decodes_it():
    """PIE-Bench's decoder clips a run at the last pixel; a run length of 10**30 is accepted and clipped, never
    overflowing the decoder's integers."""
    pairs = check_mask_pairs([5, 10**30], (4, 4))
    assert pairs == (5, 11)
    assert decode_mask(pairs, (4, 4), border=False).reshape(-1).tolist() == [0] * 5 + [1] * 11


# ------------------------------------------------------------------------------------- one writer per result

def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _train_argv(model_dir: Path, prompt: str) -> list[str]:
    """Null-text inversion, 1 inner step, T = 4: the same lock as every method, the least compute."""
    return ["--prompt", prompt, "--image_path", CAT, "--index", "3", "--model", "tiny", "--device", "cpu",
            "--num_ddim_steps", "4", "--num_inner_steps", "1", "--inversion", "nulltext", "--model_dir", str(model_dir)]


def test_a_second_writer_stops_while_another_process_holds_the_result(tmp_path, loaded, capsys):
    """Another process holds the result's lock: training the same --index stops with one line naming the result
    and its lock, nothing saved; once that process ends the training runs."""
    model_dir = tmp_path / "models"
    result = model_dir / "model_nulltext" / "model-inner1-epoch1-nulltext-[3].safetensors"
    lock_path(result).parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from filelock import FileLock; "
         f"lock = FileLock({str(lock_path(result))!r}); lock.acquire(); print('held', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, out, err = _run("stylediffusion", _train_argv(model_dir, "a cat"), capsys)
        assert code == 2 and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1 and "being written by another process" in err and result.name in err
        assert "saved" not in out and not result.exists()
    finally:
        holder.kill()
        holder.wait()
    code, out, err = _run("stylediffusion", _train_argv(model_dir, "a cat"), capsys)
    assert code == 0, err
    assert f"saved {result}" in out


def test_two_processes_training_one_index_never_both_report_saved(tmp_path, loaded, capsys):
    """The race of the issue, with two real processes (a stylediffusion.py subprocess and this test process
    running the CLI at the same time): two prompts, one --index. Exactly one reports "saved" and the file on disk
    is its result; the other stops with exit 2 and one line (the lock is held, or the result now exists for
    another prompt)."""
    model_dir = tmp_path / "models"
    other = subprocess.Popen([sys.executable, str(REPO / "stylediffusion.py"), *_train_argv(model_dir, "a cat on a rug")],
                             cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done = {"a cat": _run("stylediffusion", _train_argv(model_dir, "a cat"), capsys)}
    out, err = other.communicate(timeout=300)
    done["a cat on a rug"] = (other.returncode, out, err)
    saved = [prompt for prompt, (code, out, _) in done.items() if code == 0 and "saved" in out]
    assert len(saved) == 1, done
    (loser,) = set(done) - set(saved)
    code, out, err = done[loser]
    assert code == 2 and "Traceback" not in err and "saved" not in out, done[loser]
    assert len(err.strip().splitlines()) == 1
    assert "being written by another process" in err or "made for other settings" in err
    sidecar = json.loads((model_dir / "model_nulltext" / "model-inner1-epoch1-nulltext-[3].json").read_text())
    assert sidecar["prompt"] == saved[0]


# ------------------------------------------------------------------------------------- resume verifies outputs

def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_pie_bench_resume_redoes_a_truncated_output_and_says_so(tmp_path, loaded, capsys):
    """A finished case whose PNG was cut in half is redone by the next run (a real process), which names the
    reason; a sound case is skipped."""
    _pie(tmp_path / "data", {"000000000001": "0_random/1.png", "000000000002": "0_random/2.png"})
    out = tmp_path / "out"
    argv = pie(tmp_path, "data", "--output_path", str(out), "--num_ddim_steps", "3", "--method", "ddim")
    code, _, err = _run("pie_bench", argv, capsys)
    assert code == 0, err
    images = out / "ddim+p2p" / "annotation_images" / "0_random"
    _truncate(images / "1.png")
    sound = (images / "2.png").stat().st_mtime_ns
    proc = subprocess.run([sys.executable, str(REPO / "pie_bench.py"), *argv], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "1 done, 1 skipped" in proc.stdout
    assert "redone cases" in proc.stdout and "1.png is missing or does not decode" in proc.stdout
    with Image.open(images / "1.png") as image:
        image.load()
    assert (images / "2.png").stat().st_mtime_ns == sound


def test_csv_resume_redoes_a_row_whose_edit_is_truncated_or_whose_sidecar_differs(tmp_path, loaded, capsys):
    table = _csv(tmp_path / "edit.csv", EDIT_COLUMNS,
                 [1, "a cat", CAT, "a dog", "", "", "[.5,]", "[.6,]", "[.6,]", "[0.,]", "Replacement"])
    train = csv_run(tmp_path, "edit.csv", "--inversion", "npi")
    assert _run("csv", train, capsys)[0] == 0
    edit = train + ["--is_train", ""]
    assert _run("csv", edit, capsys)[0] == 0
    folder = tmp_path / "out" / table.stem / "1 a dog"
    (png,) = folder.glob("edited_img-*.png")
    code, out, _ = _run("csv", edit, capsys)
    assert code == 0 and "already edited" in out
    _truncate(png)
    code, out, _ = _run("csv", edit, capsys)
    assert code == 0 and "redone" in out and "does not decode" in out, out
    (side,) = folder.glob("edited_img-*.json")
    record = json.loads(side.read_text())
    record["edit"]["tau_c"] = [0.9]
    side.write_text(json.dumps(record))
    code, out, _ = _run("csv", edit, capsys)
    assert code == 0 and "redone" in out and "records other settings" in out, out
