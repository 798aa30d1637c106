"""StyleDiffusion over a CSV: train every row (``--is_train True``) or edit every row (``--is_train ''``).

Runs in process (the model is loaded once; no shell commands). A failing row is reported and the run
goes on; a summary table ends the run and the exit status is 1 if any row failed. Rows already complete
are skipped. ``accelerate launch stylediffusion_csv.py …`` splits the rows between processes.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from sdtoolkit.cli import flags as cli
from sdtoolkit.cli.runs import shard, summary, table
from sdtoolkit.core import checks, values
from sdtoolkit.core.errors import UsageError
from sdtoolkit.core.io import case_filename
from sdtoolkit.core.naming import front_door
from sdtoolkit.core.paths import check_name, check_writable_dir
from sdtoolkit.core.settings import TAU_NAMES, EditConfig, EditType, InvertConfig
from sdtoolkit.jobs.cases import read_cases, resolve_image

TRAIN_COLUMNS = ("case_number", "prompt", "image_path")
EDIT_COLUMNS = TRAIN_COLUMNS + ("target", "blend_word", "eq_params", "tau_v", "tau_c", "tau_s", "tau_u", "edit_type")
"""The reference's editing CSV columns; a tau column added later is optional (its EditConfig default)."""
DEFAULT_TAUS = EditConfig(target=None).tau_lists()
COLUMNS = {name: name for name in (*TAU_NAMES, "image_path")}
"""The settings whose errors name their CSV column (a row's taus and image)."""


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser(__doc__)
    cli.add_flags(p, "--is_train", "--is_1word", "--inversion", helps={"is_train": "True: train every row; '' or "
                  "False: edit", "is_1word": "1-word CSV (prompt 'dog', target 'tiger')"})
    p.add_argument("--prompts_path", default="./data/stylediffusion_prompts.csv", help="the CSV")
    p.add_argument("--save_path", default="stylediffusion-results", help="edits go to {save_path}/{csv stem}/")
    cli.add_flags(p, "--from_case", "--end_case")
    cli.add_model_flags(p)
    cli.add_flags(p, "--num_ddim_steps", "--guidance_scale", "--num_inner_steps", "--num_epoch", "--schedule",
                  "--w_attnloss", "--seed", "--model_dir", "--overwrite")
    return p


@dataclass
class Row:
    case: str
    prompt: str
    image_path: str
    edit: EditConfig | None  # for editing runs


def parse_rows(df: pd.DataFrame, args: argparse.Namespace, editing: bool, template: InvertConfig) -> list[Row]:
    """Parse every selected row before any work starts: a malformed row, or one whose file names would not fit
    the file system, is a usage error naming the case."""
    rows = []
    for _, r in df.iterrows():
        case = str(r["case_number"]).strip()
        edit = None
        try:
            if editing:
                with front_door(COLUMNS):
                    taus = values.tau_lists(lambda name: r[name] if name in r.index else DEFAULT_TAUS[name])
                edit = EditConfig(
                    target=r["target"], edit_type=r["edit_type"].strip() or EditType.REPLACEMENT,
                    **taus,
                    blend_word=values.blend_words(r["blend_word"]), eq_params=values.eq_params(r["eq_params"]),
                    outdir=str(Path(args.save_path) / Path(args.prompts_path).stem),
                )
                check_name(case_filename(case, r["prompt"]), "case_number and prompt (the input copy's name)")
                if edit.edit_type is not EditType.STORE_ATTN:
                    check_name(case_filename(case, edit.target), "case_number and target (the edited copy's name)")
            checks.check_output_names(replace(template, prompt=r["prompt"], index=case), edit, "case_number")
        except UsageError as exc:
            raise UsageError(f"{args.prompts_path}, case {case}: {exc}") from None
        image = resolve_image(r["image_path"], args.prompts_path)
        try:
            checks.check_size(args.resolution, args.keep_aspect, image)
        except UsageError as exc:
            raise UsageError(f"{args.prompts_path}, case {case}: {exc}") from None
        rows.append(Row(case, r["prompt"], image, edit))
    return rows


def flat_copies(models, cfg, edit, written: list[Path]) -> list[Path]:
    """``input/{case} {prompt}.png`` (the model's input crop) and ``edited/{case} {target}.png`` (first combination)."""
    from sdtoolkit.core.images import load_image
    from sdtoolkit.core.io import atomic_write, save_image

    base = Path(edit.outdir)
    out = [save_image(base / "input" / case_filename(cfg.index, cfg.prompt), 
                    load_image(cfg.image_path, cfg.resolution or models.image_size, *cfg.crop,
                               keep_aspect=cfg.keep_aspect, multiple=models.family.size_multiple))]
    if edit.edit_type is not EditType.STORE_ATTN:
        edited = next(p for p in written if p.name.startswith("edited_img-") and p.suffix == ".png")
        dest = base / "edited" / case_filename(cfg.index, edit.target)
        out.append(atomic_write(dest, lambda tmp: shutil.copyfile(edited, tmp)))
    return out


def edit_resume(cfg, edit) -> str | None:
    """None when the row's edit is complete and sound (its images decode, its sidecars record these settings);
    else why it is (re)done: "" when nothing was written yet, the reason when a file is missing or damaged."""
    from sdtoolkit.jobs.edit import damaged_outputs, expected_files, sidecar_files

    flat = [Path(edit.outdir) / "input" / case_filename(cfg.index, cfg.prompt)]
    if edit.edit_type is not EditType.STORE_ATTN:
        flat.append(Path(edit.outdir) / "edited" / case_filename(cfg.index, edit.target))
    if not any(p.exists() for p in expected_files(cfg, edit) + sidecar_files(cfg, edit) + flat):
        return ""
    return damaged_outputs(cfg, edit, flat)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    model = checks.model_id(args.model, args.sd_version)
    editing = not args.is_train
    template = cli.invert_config(args, model, prompt="", image_path="")
    df = read_cases(args.prompts_path, EDIT_COLUMNS if editing else TRAIN_COLUMNS, args.from_case, args.end_case)
    rows = parse_rows(df, args, editing, template)
    if editing:
        check_writable_dir(Path(args.save_path) / Path(args.prompts_path).stem, "--save_path")
    else:
        check_writable_dir(template.folder(), "--model_dir")

    from sdtoolkit.core.models import load_models
    from sdtoolkit.jobs.edit import edit_folder, run_edit
    from sdtoolkit.jobs.invert import invert

    part = shard(args.device)
    mine, tag = part.mine(rows), part.tag
    models = load_models(model, part.device, args.dtype, **cli.load_kwargs(args))
    checks.check_multiple(args.resolution, models.family.size_multiple)  # the size step, known once loaded
    results: list[tuple[str, str, str]] = []
    for row in tqdm(mine, desc=f"{tag}rows", position=part.index):
        cfg = replace(template, prompt=row.prompt, image_path=row.image_path, index=row.case)
        try:
            with front_door(COLUMNS):
                checks.check_image(cfg.image_path, cfg.crop)
            if not editing:
                res = invert(models, cfg, overwrite=args.overwrite, progress=False)
                if not res.trained:
                    results.append((row.case, "skipped", "already trained"))
                else:
                    warn = " — WARNING: reconstructs worse than plain DDIM" if res.sidecar["worse_than_ddim"] else ""
                    results.append((row.case, "done", f"{res.path}{warn}"))
            elif (redo := edit_resume(cfg, row.edit)) is None:
                results.append((row.case, "skipped", "already edited"))
            else:
                written = run_edit(models, cfg, row.edit, progress=False)
                flat_copies(models, cfg, row.edit, written)
                again = f" (redone: {redo})" if redo else ""
                results.append((row.case, "done", f"{edit_folder(cfg, row.edit)}{again}"))
        except Exception as exc:  # a failing row is reported and counted; the run goes on
            reason = str(exc).splitlines()[0] if isinstance(exc, UsageError) else f"{type(exc).__name__}: {exc}"
            results.append((row.case, "failed", reason))
        tqdm.write(f"{tag}case {row.case}: {results[-1][1]} ({results[-1][2]})")
    block = [summary([r[1] for r in results], len(mine), "rows", tag)]
    block += table([(case, f"{status:<7}  {reason}") for case, status, reason in results], min_width=4)
    print("\n".join(block), flush=True)  # one write: other processes' lines cannot land inside the table
    return 1 if any(r[1] == "failed" for r in results) else 0


def console() -> int:
    """Console-script entry point: :func:`main` with the CLI error convention (exit 2, one line)."""
    return cli.run_main(main)


if __name__ == "__main__":
    sys.exit(console())
