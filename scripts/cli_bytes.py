"""Run every CLI on the tiny model (fixed seeds, T = 3–4, 2 inner steps) and record the SHA-256 of every file it
writes, so a restructuring can be checked to leave every output byte-identical.

    python scripts/cli_bytes.py --out before.json        # on the old code
    python scripts/cli_bytes.py --out after.json --compare before.json

Runs each CLI through its reference-named script (``stylediffusion.py``, ``eval_metrics/ns_lpips.py``, …) as its
own process in a scratch folder (``--work``, emptied first). JSON files are hashed after dropping their timing
fields (``elapsed_seconds``, ``seconds``); in JSON, CSV and stdout the scratch folder's and the checkout's paths
are replaced by ``<work>`` and ``<repo>`` (so two checkouts can be compared); stdout is hashed with its timings
("in 12 s", "12.3 s") blanked. Exit 1 when ``--compare`` finds a difference (listed).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CAT, TOY, MASK = "cat.jpg", "toy.png", "mask.png"  # copied into the scratch folder: paths the same for any checkout
TIMING_KEYS = {"elapsed_seconds", "seconds"}
FAST = ["--model", "tiny", "--device", "cpu", "--num_ddim_steps", "4", "--num_inner_steps", "2"]
PROMPT, TARGET = "a cat sitting on a rug", "a dog sitting on a rug"
CSV = f"""case_number,prompt,image_path,target,blend_word,eq_params,tau_v,tau_c,tau_s,tau_u,edit_type
3,{PROMPT},{CAT},{TARGET},"[('cat',),('dog',)]","[('dog',),(2,)]","[.5,]","[.6,]","[.8,]","[.5,]",Replacement
4,a red circle on a green background,{TOY},a blue circle on a green background,"[('red',),('blue',)]",,"[.6,]","[.6,]","[.6,]","[.0,]",Replacement
"""


def runs() -> list[tuple[str, list[str]]]:
    """(label, argv after ``python``) of every CLI run, in order (later runs read earlier outputs)."""
    sd = [str(REPO / "stylediffusion.py")]
    edit = ["--is_train", "", "--target", TARGET]
    one = ["--index", "1", "--prompt", PROMPT, "--image_path", CAT]
    csv = [str(REPO / "stylediffusion_csv.py"), "--prompts_path", "cases.csv", "--save_path", "csv-results"]
    masks = ["--prompts_path", "cases.csv", "--input_path", "csv-results/cases/input"]
    pie = [str(REPO / "pie_bench.py"), "--data_path", "pie", "--output_path", "pie-out", "--model", "tiny",
           "--device", "cpu", "--num_ddim_steps", "3", "--num_inner_steps", "2"]
    return [
        ("sd train", sd + ["--is_train", "True", *one, *FAST]),
        ("sd train again", sd + ["--is_train", "True", *one, *FAST]),
        ("sd edit", sd + [*edit, *one, *FAST, "--tau_v", "[.5,1.]", "--tau_u", "0.5",
                          "--blend_word", "[('cat',), ('dog',)]", "--eq_params", "[('dog',), (2,)]"]),
        ("sd storeattn", sd + ["--is_train", "", "--edit_type", "StoreAttn", *one, *FAST]),
        ("sd baselines", sd + [*edit, *one, *FAST, "--baselines", "--outdir", "baselines"]),
        ("sd npi train", sd + ["--is_train", "True", "--inversion", "npi", *one, *FAST]),
        ("sd npi refine mask", sd + ["--is_train", "", "--inversion", "npi", *one, *FAST, "--edit_type", "Refinement",
                                     "--target", "a small dog sitting on a rug", "--blend_mask", MASK]),
        ("sd nulltext fast", sd + ["--is_train", "True", "--inversion", "nulltext", "--schedule", "fast", *one,
                                   "--model", "tiny", "--device", "cpu", "--num_ddim_steps", "3"]),
        ("csv train", csv + ["--is_train", "True", *FAST]),
        ("csv edit", csv + ["--is_train", "", *FAST]),
        ("csv edit again", csv + ["--is_train", "", *FAST]),
        ("p2plus", [str(REPO / "p2plus.py"), "--prompt", PROMPT, "--target", TARGET, "--seed", "[0,1]",
                    "--tau_u", "[.5,0.]", "--blend_word", "[('cat',), ('dog',)]", "--model", "tiny", "--device", "cpu",
                    "--num_ddim_steps", "4", "--outdir", "p2plus"]),
        ("storemask", [str(REPO / "eval_metrics" / "storemask.py"), *masks, "--fgmask_path", "fg", "--bgmask_path", "bg",
                       "--model", "tiny", "--device", "cpu", "--num_ddim_steps", "4"]),
        ("ns_lpips", [str(REPO / "eval_metrics" / "ns_lpips.py"), *masks, "--edited_path", "csv-results/cases/edited",
                      "--mask_path", "bg", "--offline_random_weights", "--device", "cpu", "--out", "ns_lpips.csv"]),
        ("pie stylediffusion", pie),
        ("pie npi mask", pie + ["--method", "npi", "--use_annotation_mask", "--blend_from_brackets"]),
        ("pie_metrics", [str(REPO / "eval_metrics" / "pie_metrics.py"), "--data_path", "pie", "--output_path", "pie-out",
                         "--methods", "stylediffusion", "npi", "--result_path", "metrics.csv",
                         "--offline_random_weights", "--random_size", "tiny", "--device", "cpu", "--quiet"]),
        ("convert", [str(REPO / "scripts" / "convert_reference_pth.py"), "ref.pth", "--prompt", PROMPT, "--image_path", CAT,
                     "--index", "9", "--model", "tiny", "--device", "cpu", "--num_ddim_steps", "4",
                     "--model_dir", "converted"]),
        ("convert edit", sd + [*edit, "--index", "9", "--prompt", PROMPT, "--image_path", CAT, "--model", "tiny",
                               "--device", "cpu", "--num_ddim_steps", "4", "--model_dir", "converted"]),
    ]


def prepare(work: Path) -> None:
    """The scratch folder: the images, the CSV, a toy PIE-Bench folder (3 cases) and a reference-layout .pth."""
    import numpy as np
    from PIL import Image

    from toyworld.pie_bench import write_toy_pie_bench

    shutil.copyfile(REPO / "example_images" / "cat.jpg", work / CAT)
    shutil.copyfile(REPO / "example_images" / "toy_red_circle.png", work / TOY)
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 8:40] = 255
    Image.fromarray(mask).save(work / MASK)
    (work / "cases.csv").write_text(CSV)
    write_toy_pie_bench(work / "pie", 1, 0, 64)
    spec = importlib.util.spec_from_file_location("convert_test", REPO / "tests" / "test_convert_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    import torch

    torch.manual_seed(0)
    torch.save(module.reference_steps(4, 197, 77), work / "ref.pth")  # the tiny image encoder: 197 tokens


def digest(path: Path, work: Path) -> str:
    data = path.read_bytes()
    if path.suffix in (".json", ".csv"):
        data = data.replace(str(work).encode(), b"<work>").replace(str(REPO).encode(), b"<repo>")
    if path.suffix == ".json":
        def strip(value):
            if isinstance(value, dict):
                return {k: strip(v) for k, v in value.items() if k not in TIMING_KEYS}
            return [strip(v) for v in value] if isinstance(value, list) else value
        data = json.dumps(strip(json.loads(data)), sort_keys=True).encode()
    return hashlib.sha256(data).hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="JSON of {run: {stdout, rc}, file: sha256}")
    ap.add_argument("--work", type=Path, default=Path("/tmp/sdtoolkit-cli-bytes"), help="scratch folder (emptied)")
    ap.add_argument("--compare", type=Path, default=None, help="an earlier --out to compare with")
    args = ap.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    prepare(args.work)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    record: dict[str, str] = {}
    for label, argv in runs():
        proc = subprocess.run([sys.executable, *argv], cwd=args.work, env=env, capture_output=True, text=True)
        out = re.sub(r"\d+(\.\d+)? s\b", "# s", proc.stdout.replace(str(args.work), "<work>").replace(str(REPO), "<repo>"))
        record[f"run {label}"] = f"rc {proc.returncode} stdout {hashlib.sha256(out.encode()).hexdigest()}"
        print(f"{label}: rc {proc.returncode}" + (f"\n{proc.stderr[-2000:]}" if proc.returncode else ""), flush=True)
    for path in sorted(p for p in args.work.rglob("*") if p.is_file()):
        record[str(path.relative_to(args.work))] = digest(path, args.work)
    args.out.write_text(json.dumps(record, indent=1, sort_keys=True))
    print(f"{len(record)} entries -> {args.out}")
    if args.compare is None:
        return 0
    old = json.loads(args.compare.read_text())
    diff = sorted(k for k in set(old) | set(record) if old.get(k) != record.get(k))
    for key in diff:
        print(f"DIFFERS: {key}: {old.get(key)} -> {record.get(key)}")
    print(f"{len(diff)} of {len(set(old) | set(record))} entries differ")
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main())
