"""Foreground / background masks for NS-LPIPS from cross-attention during DDIM inversion (docs/method.md §7).

For each case of an editing CSV: invert ``{input_path}/{case} {prompt}.png`` with its prompt over 50 DDIM
steps, average the cross-attention maps at 1/32 of the image size (16×16 at 512², 24×16 at 768×512) of the blend
word's *source* word(s) over the down/up layers, heads and steps, normalise by its max and resize to 256×256
(non-square images: short side 256, the image's aspect). The foreground mask is
that map, the background (non-selected) mask is 1 − map; both are written as 8-bit grayscale PNGs named
``{case} {prompt}.png`` (255 = 1.0). Missing inputs are listed and counted, never skipped silently.

``--mode corrected`` (default): all heads; every token of every source blend word; the soft map resized
bilinearly; background = 1 − map (gray PNG); inputs ``{case} {prompt}.png``.
``--mode reference`` reproduces the published mask script: heads h//2 … h−1 only (its batch-of-one store
slices ``attn[h // 2:]``); only the first source blend word, at token ``prompt.split(' ').index(word) + 1``
(right only when every earlier word is one token); the map scaled to 255 · map / max, truncated to uint8,
resized to 256 with PIL's bicubic filter, background = 255 − foreground (RGB PNG); inputs
``{case} {prompt}.jpg``.
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
from sdtoolkit.core import checks, values
from sdtoolkit.core.errors import UsageError
from sdtoolkit.core.io import case_filename, save_image
from sdtoolkit.core.paths import check_name, check_writable_dir
from sdtoolkit.jobs.cases import read_cases

REPO_ROOT = Path(__file__).resolve().parents[2]
MASK_SIZE = 256
MODES = ("corrected", "reference")
INPUT_EXT = {"corrected": ".png", "reference": ".jpg"}


def mask_size(map_hw: tuple[int, int]) -> tuple[int, int]:
    """Mask (h, w): MASK_SIZE² for square images (the reference), else short side MASK_SIZE with the maps' aspect."""
    h, w = map_hw
    return (MASK_SIZE, round(MASK_SIZE * w / h)) if h <= w else (round(MASK_SIZE * h / w), MASK_SIZE)


def inversion_maps(models, image_path: Path | Image.Image, prompt: str, num_steps: int, upper_heads: bool,
                   resolution: int | None = None, keep_aspect: bool = False) -> torch.Tensor:
    """Per-token cross-attention (mh, mw, K) of the conditional branch during DDIM inversion of the image,
    averaged over the map layers, heads (or heads h//2 … h−1 with ``upper_heads``) and steps. ``image_path``: a
    file, or a PIL image in memory."""
    from sdtoolkit.control.controllers import AttentionStore
    from sdtoolkit.core.images import fit_image, load_image, pil_to_tensor
    from sdtoolkit.methods.inversions import ddim_inversion

    size, multiple = resolution or models.image_size, models.family.size_multiple
    pil = fit_image(image_path, size, keep_aspect=keep_aspect, multiple=multiple) if isinstance(image_path, Image.Image) \
        else load_image(image_path, size, keep_aspect=keep_aspect, multiple=multiple)
    x = pil_to_tensor(pil)
    store = AttentionStore(models.layers(), upper_heads=upper_heads)
    ddim_inversion(models, models.encode_latent(x), models.encode_text([prompt]), models.schedule(num_steps),
                   controller=store, pooled=models.encode_pooled([prompt]))
    return store.average()[0]


def attention_mask(models, image_path: Path | Image.Image, prompt: str, words: tuple[str, ...], num_steps: int = 50,
                   resolution: int | None = None, keep_aspect: bool = False) -> torch.Tensor:
    """Corrected mode: soft foreground mask (h, w) in [0, 1] of ``words`` in ``prompt`` (:func:`mask_size`)."""
    from sdtoolkit.core.words import find_word_tokens

    tokens = sorted({t for w in words for t in find_word_tokens(prompt, w, models.tokenizer)})
    maps = inversion_maps(models, image_path, prompt, num_steps, False, resolution, keep_aspect)
    amap = maps[:, :, tokens].sum(-1)  # (mh, mw)
    amap = amap / amap.max().clamp_min(1e-12)
    size = mask_size(tuple(amap.shape))
    return F.interpolate(amap[None, None], size=size, mode="bilinear", align_corners=False)[0, 0].clamp(0, 1)


def reference_token(prompt: str, words: tuple[str, ...]) -> int:
    """The token the reference's mask script reads: the first blend word's index among the prompt's
    space-separated words, plus one (for the start token)."""
    parts = prompt.split(" ")
    if not words or words[0] not in parts:
        raise ValueError(f"--mode reference: blend word {words[0] if words else ''!r} is not one of the prompt's "
                         f"space-separated words {parts}")
    return parts.index(words[0]) + 1


def reference_masks(amap: torch.Tensor) -> tuple[Image.Image, Image.Image]:
    """Reference mode: foreground and background (RGB, MASK_SIZE²) from one token's map (r, r):
    uint8(255 · map / max) (truncated), PIL bicubic resize, background = 255 − foreground."""
    scaled = (255 * amap / amap.max()).float().cpu().numpy()
    rgb = np.repeat(scaled[:, :, None], 3, axis=2).astype(np.uint8)
    fg = np.asarray(Image.fromarray(rgb).resize((MASK_SIZE, MASK_SIZE), Image.Resampling.BICUBIC))
    return Image.fromarray(fg), Image.fromarray(255 - fg)


def to_png(mask: torch.Tensor) -> Image.Image:
    return Image.fromarray((mask.cpu().numpy() * 255 + 0.5).astype(np.uint8), mode="L")


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser(__doc__)
    p.add_argument("--prompts_path", default=str(REPO_ROOT / "data" / "stylediffusion_editing.csv"),
                   help="editing CSV (case_number, prompt, blend_word)")
    p.add_argument("--input_path", default=str(REPO_ROOT / "results" / "input"), help="folder of '{case} {prompt}.png' ('.jpg' with --mode reference)")
    p.add_argument("--bgmask_path", default=str(REPO_ROOT / "results" / "bgmask"), help="output: background masks")
    p.add_argument("--fgmask_path", default=str(REPO_ROOT / "results" / "fgmask"), help="output: foreground masks")
    p.add_argument("--from_case", type=int, default=None, help="first case_number (inclusive)")
    p.add_argument("--end_case", type=int, default=None, help="stop before this case_number (exclusive, as the reference)")
    cli.add_model_flags(p, compile_flag=False, image_encoder=False, training=False)
    p.add_argument("--num_ddim_steps", type=int, default=50)
    p.add_argument("--allow_missing", action="store_true", help="mask the cases whose input exists, exit 0")
    p.add_argument("--mode", choices=MODES, default="corrected",
                   help="'reference': the published mask script's heads, token, uint8/bicubic masks and .jpg inputs")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    df = read_cases(args.prompts_path, ("case_number", "prompt", "blend_word"), args.from_case, args.end_case)
    cases = []
    for _, row in df.iterrows():
        try:
            blend = values.blend_words(row["blend_word"])
        except UsageError as exc:
            raise UsageError(f"{args.prompts_path}, case {row['case_number']}: {exc}") from None
        if blend is None:
            raise UsageError(f"{args.prompts_path}, case {row['case_number']}: empty blend_word; the mask needs a source word")
        cases.append((str(row["case_number"]).strip(), row["prompt"], blend[0]))
    checks.check_steps(args.num_ddim_steps)
    checks.check_size(args.resolution, False)
    for case, prompt, _ in cases:
        try:
            check_name(case_filename(case, prompt, INPUT_EXT[args.mode]), "case_number and prompt")
        except UsageError as exc:
            raise UsageError(f"{args.prompts_path}, case {case}: {exc}") from None
    check_writable_dir(args.fgmask_path, "--fgmask_path")
    check_writable_dir(args.bgmask_path, "--bgmask_path")
    ext = INPUT_EXT[args.mode]
    inputs = {case: Path(args.input_path) / case_filename(case, prompt, ext) for case, prompt, _ in cases}
    missing = [c for c in cases if not inputs[c[0]].is_file()]
    for case, _, _ in missing:
        print(f"missing input image (case {case}): {inputs[case]}", file=sys.stderr)
    if missing and not args.allow_missing:
        print(f"{len(missing)} of {len(cases)} cases miss their input (listed above); pass --allow_missing to mask the rest")
        print(f"masked 0 of {len(cases)} cases")
        return 1
    from sdtoolkit.core.models import load_models

    models = load_models(checks.model_id(args.model, args.sd_version), args.device, args.dtype, **cli.load_kwargs(args))
    checks.check_multiple(args.resolution, models.family.size_multiple)  # the size step, known once loaded
    done, failed = 0, []
    for case, prompt, words in tqdm([c for c in cases if c not in missing], desc="masks"):
        try:
            if args.mode == "reference":
                token = reference_token(prompt, words)
                amap = inversion_maps(models, inputs[case], prompt, args.num_ddim_steps, True, args.resolution,
                                      args.keep_aspect)
                fg_png, bg_png = reference_masks(amap[:, :, token])
            else:
                fg = attention_mask(models, inputs[case], prompt, words, args.num_ddim_steps, args.resolution,
                                    args.keep_aspect)
                fg_png, bg_png = to_png(fg), to_png(1 - fg)
        except ValueError as exc:
            failed.append(case)
            tqdm.write(f"case {case}: failed ({exc})")
            continue
        save_image(Path(args.fgmask_path) / case_filename(case, prompt), fg_png)
        save_image(Path(args.bgmask_path) / case_filename(case, prompt), bg_png)
        done += 1
    print(f"mode: {args.mode}; masked {done} of {len(cases)} cases ({len(missing)} missing input, {len(failed)} failed) -> "
          f"{args.fgmask_path}, {args.bgmask_path}")
    return 1 if failed or (missing and not args.allow_missing) else 0


def console() -> int:
    """Console-script entry point: :func:`main` with the CLI error convention (exit 2, one line)."""
    return cli.run_main(main)


if __name__ == "__main__":
    sys.exit(console())
