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

from sdtoolkit import cli
from sdtoolkit.errors import UsageError
from sdtoolkit.constants import METHODS, SD_VERSIONS

TRAIN_COLUMNS = ("case_number", "prompt", "image_path")
EDIT_COLUMNS = TRAIN_COLUMNS + ("target", "blend_word", "eq_params", "tau_v", "tau_c", "tau_s", "tau_u", "edit_type")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--is_train", type=cli.str2bool, default=True, help="True: train every row; '' or False: edit")
    p.add_argument("--is_1word", type=cli.str2bool, default=False, help="1-word CSV (prompt 'dog', target 'tiger')")
    p.add_argument("--inversion", choices=METHODS, default="stylediffusion")
    p.add_argument("--prompts_path", default="./data/stylediffusion_prompts.csv", help="the CSV")
    p.add_argument("--save_path", default="stylediffusion-results", help="edits go to {save_path}/{csv stem}/")
    p.add_argument("--from_case", type=int, default=None, help="first case_number (inclusive)")
    p.add_argument("--end_case", type=int, default=None, help="last case_number (inclusive)")
    p.add_argument("--model", default=None, help="hub id, local SD folder, 'tiny' or 'toy' (default: --sd_version)")
    p.add_argument("--sd_version", default="sd_1_4", help=f"alias of --model: {', '.join(SD_VERSIONS)}")
    p.add_argument("--image_encoder", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", help="auto (fp32 on CPU, bf16/fp16 on GPU), fp32, bf16, fp16")
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet (experimental, off until measured)")
    p.add_argument("--num_ddim_steps", type=int, default=30)
    p.add_argument("--guidance_scale", type=float, default=7.5)
    p.add_argument("--num_inner_steps", type=int, default=None, help="default 100 (stylediffusion), 10 (nulltext)")
    p.add_argument("--num_epoch", type=int, default=1)
    p.add_argument("--w_attnloss", type=cli.str2bool, default=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model_dir", default=".", help="folder that holds model_learnv/ etc.")
    p.add_argument("--overwrite", action="store_true", help="retrain rows trained with other settings")
    return p


@dataclass
class Row:
    case: str
    prompt: str
    image_path: str
    edit: object | None  # jobs.EditConfig for editing runs


def read_rows(path: str, columns: tuple[str, ...], from_case: int | None, end_case: int | None) -> pd.DataFrame:
    """Read the CSV as text, check its columns and select the case range (clear errors, exit 2)."""
    csv = Path(path)
    if not csv.is_file():
        raise UsageError(f"--prompts_path {path!r} does not exist")
    try:
        df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise UsageError(f"{path} is empty; expected the columns {', '.join(columns)}") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path} is not a readable CSV file ({str(exc).strip().splitlines()[-1]})") from None
    if not isinstance(df.index, pd.RangeIndex):  # pandas made the surplus leading fields an index: columns shifted
        raise UsageError(f"{path}: the rows have more fields than the header ({', '.join(map(str, df.columns))}); "
                         "quote texts that contain commas") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise UsageError(f"{path} lacks the column(s) {', '.join(missing)}; columns found: {', '.join(map(str, df.columns))}")
    if df.empty:
        raise UsageError(f"{path} has no rows")
    try:
        cases = df["case_number"].astype(int)
    except ValueError:
        raise UsageError(f"{path}: case_number must be integers, found {list(df['case_number'])}") from None
    repeated = sorted(set(cases[cases.duplicated()]))
    if repeated:
        raise UsageError(f"{path}: case_number {repeated} appear(s) more than once; case numbers name the output files")
    df = df.assign(case_number=cases.astype(str))  # "03" and "3" are the same case everywhere
    keep = (cases >= (from_case if from_case is not None else cases.min())) & (
        cases <= (end_case if end_case is not None else cases.max()))
    if not keep.any():
        raise UsageError(f"--from_case {from_case} --end_case {end_case} selects none of the cases {sorted(cases)}")
    return df[keep]


def resolve_image(image_path: str, csv_path: str) -> str:
    """The image as written (relative to the working folder), else relative to the CSV's folder or its parent."""
    for base in (Path.cwd(), Path(csv_path).resolve().parent, Path(csv_path).resolve().parent.parent):
        candidate = base / image_path
        if candidate.is_file():
            return str(candidate)
    return image_path


def parse_rows(df: pd.DataFrame, args: argparse.Namespace, editing: bool) -> list[Row]:
    """Parse every selected row before any work starts: a malformed row is a usage error naming the case."""
    from sdtoolkit.config import EditConfig

    rows = []
    for _, r in df.iterrows():
        case = str(r["case_number"]).strip()
        edit = None
        if editing:
            try:
                edit = EditConfig(
                    target=r["target"], edit_type=r["edit_type"].strip() or "Replacement",
                    tau_v=cli.fraction_list(r["tau_v"], "tau_v"), tau_c=cli.fraction_list(r["tau_c"], "tau_c"),
                    tau_s=cli.fraction_list(r["tau_s"], "tau_s"), tau_u=cli.fraction_list(r["tau_u"], "tau_u"),
                    blend_word=cli.blend_words(r["blend_word"]), eq_params=cli.eq_params(r["eq_params"]),
                    outdir=str(Path(args.save_path) / Path(args.prompts_path).stem),
                )
            except UsageError as exc:
                raise UsageError(f"{args.prompts_path}, case {case}: {exc}") from None
        rows.append(Row(case, r["prompt"], resolve_image(r["image_path"], args.prompts_path), edit))
    return rows


def flat_copies(models, cfg, edit, written: list[Path]) -> list[Path]:
    """``input/{case} {prompt}.png`` (the model's input crop) and ``edited/{case} {target}.png`` (first combination)."""
    from sdtoolkit.images import load_image
    from sdtoolkit.layout import atomic_write, case_filename, save_image

    base = Path(edit.outdir)
    out = [save_image(base / "input" / case_filename(cfg.index, cfg.prompt), load_image(cfg.image_path, models.image_size, *cfg.crop))]
    if edit.edit_type != "StoreAttn":
        edited = next(p for p in written if p.name.startswith("edited_img-") and p.suffix == ".png")
        dest = base / "edited" / case_filename(cfg.index, edit.target)
        out.append(atomic_write(dest, lambda tmp: shutil.copyfile(edited, tmp)))
    return out


def edit_complete(cfg, edit) -> bool:
    from sdtoolkit.jobs import expected_files
    from sdtoolkit.layout import case_filename

    files = expected_files(cfg, edit) + [Path(edit.outdir) / "input" / case_filename(cfg.index, cfg.prompt)]
    if edit.edit_type != "StoreAttn":
        files.append(Path(edit.outdir) / "edited" / case_filename(cfg.index, edit.target))
    return all(f.is_file() for f in files)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.sd_version not in SD_VERSIONS:
        raise UsageError(f"--sd_version {args.sd_version!r} is not one of {', '.join(SD_VERSIONS)}")
    editing = not args.is_train
    df = read_rows(args.prompts_path, EDIT_COLUMNS if editing else TRAIN_COLUMNS, args.from_case, args.end_case)
    rows = parse_rows(df, args, editing)

    from accelerate import PartialState

    from sdtoolkit import jobs
    from sdtoolkit.models import load_models

    state = PartialState(cpu=args.device == "cpu")
    mine = rows[state.process_index :: state.num_processes]
    device = args.device if args.device != "auto" or state.num_processes == 1 else str(state.device)
    models = load_models(args.model or SD_VERSIONS[args.sd_version], device, args.dtype, args.image_encoder, args.compile)
    inner = args.num_inner_steps or (10 if args.inversion == "nulltext" else 100)
    template = jobs.InvertConfig(
        prompt="", image_path="", model=args.model or SD_VERSIONS[args.sd_version], inversion=args.inversion,
        num_ddim_steps=args.num_ddim_steps, guidance_scale=args.guidance_scale, num_inner_steps=inner,
        num_epoch=args.num_epoch, w_attnloss=args.w_attnloss, is_1word=args.is_1word, seed=args.seed,
        model_dir=args.model_dir,
    )
    results: list[tuple[str, str, str]] = []
    tag = f"[process {state.process_index + 1}/{state.num_processes}] " if state.num_processes > 1 else ""
    for row in tqdm(mine, desc=f"{tag}rows", position=state.process_index):
        cfg = replace(template, prompt=row.prompt, image_path=row.image_path, index=row.case)
        try:
            jobs.check_input_file(cfg.image_path)
            if not editing:
                res = jobs.invert(models, cfg, overwrite=args.overwrite, progress=False)
                status = "skipped" if res.status == "already trained" else "done"
                results.append((row.case, status, "already trained" if status == "skipped" else str(res.path)))
            elif edit_complete(cfg, row.edit):
                results.append((row.case, "skipped", "already edited"))
            else:
                written = jobs.run_edit(models, cfg, row.edit, progress=False)
                flat_copies(models, cfg, row.edit, written)
                results.append((row.case, "done", str(jobs.edit_folder(cfg, row.edit))))
        except Exception as exc:  # a failing row is reported and counted; the run goes on
            reason = str(exc).splitlines()[0] if isinstance(exc, UsageError) else f"{type(exc).__name__}: {exc}"
            results.append((row.case, "failed", reason))
        tqdm.write(f"{tag}case {row.case}: {results[-1][1]} ({results[-1][2]})")
    counts = {k: sum(r[1] == k for r in results) for k in ("done", "skipped", "failed")}
    width = max([4] + [len(r[0]) for r in results])
    block = [f"\n{tag}summary: {counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed "
             f"of {len(mine)} rows"] + [f"  {case:>{width}}  {status:<7}  {reason}" for case, status, reason in results]
    print("\n".join(block), flush=True)  # one write: other processes' lines cannot land inside the table
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
