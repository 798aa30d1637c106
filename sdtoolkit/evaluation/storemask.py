"""Foreground / background masks for NS-LPIPS from cross-attention during DDIM inversion (docs/method.md §7).

For each case of an editing CSV: invert ``{input_path}/{case} {prompt}.png`` with its prompt over 50 DDIM
steps, average the map-resolution (16×16 for SD) cross-attention of the blend word's *source* word(s) over
the down/up layers, heads and steps, normalise by its max and resize to 256×256. The foreground mask is
that map, the background (non-selected) mask is 1 − map; both are written as 8-bit grayscale PNGs named
``{case} {prompt}.png`` (255 = 1.0). Missing inputs are listed and counted, never skipped silently.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from sdtoolkit.cli import flags as cli
from sdtoolkit.core.errors import UsageError
from sdtoolkit.core.io import case_filename, save_image
from sdtoolkit.jobs.cases import read_cases

REPO_ROOT = Path(__file__).resolve().parents[2]
MASK_SIZE = 256


def attention_mask(models, image_path: Path, prompt: str, words: tuple[str, ...], num_steps: int = 50) -> torch.Tensor:
    """Soft foreground mask (MASK_SIZE, MASK_SIZE) in [0, 1] of ``words`` in ``prompt`` for the image."""
    from sdtoolkit.control.controllers import AttentionStore
    from sdtoolkit.core.images import load_image, pil_to_tensor
    from sdtoolkit.methods.inversions import ddim_inversion
    from sdtoolkit.core.words import find_word_tokens

    tokens = sorted({t for w in words for t in find_word_tokens(prompt, w, models.tokenizer)})
    x = pil_to_tensor(load_image(image_path, models.image_size))
    store = AttentionStore(models.layers())
    ddim_inversion(models, models.encode_latent(x), models.encode_text([prompt]), models.schedule(num_steps),
                   controller=store)
    amap = store.average()[0][:, :, tokens].sum(-1)  # (r, r)
    amap = amap / amap.max().clamp_min(1e-12)
    return F.interpolate(amap[None, None], size=(MASK_SIZE, MASK_SIZE), mode="bilinear", align_corners=False)[0, 0].clamp(0, 1)


def to_png(mask: torch.Tensor) -> Image.Image:
    return Image.fromarray((mask.cpu().numpy() * 255 + 0.5).astype(np.uint8), mode="L")


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser(__doc__)
    p.add_argument("--prompts_path", default=str(REPO_ROOT / "data" / "stylediffusion_editing.csv"),
                   help="editing CSV (case_number, prompt, blend_word)")
    p.add_argument("--input_path", default=str(REPO_ROOT / "results" / "input"), help="folder of '{case} {prompt}.png'")
    p.add_argument("--bgmask_path", default=str(REPO_ROOT / "results" / "bgmask"), help="output: background masks")
    p.add_argument("--fgmask_path", default=str(REPO_ROOT / "results" / "fgmask"), help="output: foreground masks")
    p.add_argument("--from_case", type=int, default=None, help="first case_number (inclusive)")
    p.add_argument("--end_case", type=int, default=None, help="last case_number (inclusive)")
    p.add_argument("--model", default="sd_1_4", help="hub id, local SD folder, sd_1_4/sd_1_5, 'tiny' or 'toy'")
    p.add_argument("--num_ddim_steps", type=int, default=50)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--allow_missing", action="store_true", help="mask the cases whose input exists, exit 0")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    df = read_cases(args.prompts_path, ("case_number", "prompt", "blend_word"), args.from_case, args.end_case)
    cases = []
    for _, row in df.iterrows():
        try:
            blend = cli.blend_words(row["blend_word"])
        except UsageError as exc:
            raise UsageError(f"{args.prompts_path}, case {row['case_number']}: {exc}") from None
        if blend is None:
            raise UsageError(f"{args.prompts_path}, case {row['case_number']}: empty blend_word; the mask needs a source word")
        cases.append((str(row["case_number"]).strip(), row["prompt"], blend[0]))
    inputs = {case: Path(args.input_path) / case_filename(case, prompt) for case, prompt, _ in cases}
    missing = [c for c in cases if not inputs[c[0]].is_file()]
    for case, _, _ in missing:
        print(f"missing input image (case {case}): {inputs[case]}", file=sys.stderr)
    if missing and not args.allow_missing:
        print(f"{len(missing)} of {len(cases)} cases miss their input (listed above); pass --allow_missing to mask the rest")
        print(f"masked 0 of {len(cases)} cases")
        return 1
    from sdtoolkit.core.models import load_models

    models = load_models(args.model, args.device, args.dtype)
    done, failed = 0, []
    for case, prompt, words in tqdm([c for c in cases if c not in missing], desc="masks"):
        try:
            fg = attention_mask(models, inputs[case], prompt, words, args.num_ddim_steps)
        except ValueError as exc:
            failed.append(case)
            tqdm.write(f"case {case}: failed ({exc})")
            continue
        save_image(Path(args.fgmask_path) / case_filename(case, prompt), to_png(fg))
        save_image(Path(args.bgmask_path) / case_filename(case, prompt), to_png(1 - fg))
        done += 1
    print(f"masked {done} of {len(cases)} cases ({len(missing)} missing input, {len(failed)} failed) -> "
          f"{args.fgmask_path}, {args.bgmask_path}")
    return 1 if failed or (missing and not args.allow_missing) else 0


def console() -> int:
    """Console-script entry point: :func:`main` with the CLI error convention (exit 2, one line)."""
    return cli.run_main(main)


if __name__ == "__main__":
    sys.exit(console())
