"""The input checks, one per input, shared by the CLIs and the jobs: errors name the bad value and what is valid."""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from sdtoolkit.core.constants import DEFAULT_KEY, MAX_ASPECT, MAX_DDIM_STEPS, MAX_SIDE, SD_VERSIONS, SEED_RANGE
from sdtoolkit.core.errors import UsageError
from sdtoolkit.core.naming import name
from sdtoolkit.core.paths import check_name, check_writable_dir
from sdtoolkit.core.settings import PER_WORD_TAUS, EditConfig, EditType, InversionMethod, InvertConfig, to_enum


def check_image(image_path: str, crop: tuple[int, int, int, int] = (0, 0, 0, 0), setting: str = "image_path") -> None:
    """Fail early (before loading models) on a missing or unreadable image (its header is read), or crop
    offsets that do not fit it. ``setting``: the input it is (``image_path``, ``blend_mask``)."""
    from PIL import Image, UnidentifiedImageError

    if not Path(image_path).is_file():
        raise UsageError(f"{name(setting)} {image_path!r} does not exist (or is not a file)")
    try:
        with Image.open(image_path) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError) as exc:
        raise UsageError(f"{name(setting)} {image_path!r} is not a readable image ({exc})") from None
    left, right, top, bottom = crop
    if left + right >= width or top + bottom >= height or min(crop) < 0:
        raise UsageError(f"{name('crop')} offsets left={left} right={right} top={top} bottom={bottom} do not fit a "
                         f"{width}×{height} image")


def model_id(model: str | None, sd_version: str) -> str:
    """``--model`` if given, else the hub id of ``--sd_version`` (checked even when ``--model`` wins)."""
    if sd_version not in SD_VERSIONS:
        raise UsageError(f"{name('sd_version')} {sd_version!r} is not one of {', '.join(SD_VERSIONS)}")
    return model or SD_VERSIONS[sd_version]


def check_fractions(values: list[float], what: str, text: object = None) -> list[float]:
    """Each tau value must be a number in [0, 1] and the list non-empty; returns them as floats."""
    shown = values if text is None else text
    if not values:
        raise UsageError(f"{what} {shown!r} is an empty list; give at least one value in [0, 1], e.g. [.6,]")
    out = []
    for item in values:
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            raise UsageError(f"{what} {shown!r}: {item!r} is not a number; expected values in [0, 1] such as [.6,]")
        if not 0.0 <= float(item) <= 1.0:
            raise UsageError(f"{what} {shown!r}: {item} is outside [0, 1]")
        out.append(float(item))
    return out


def check_per_word(value: Mapping, what: str = "tau_c") -> dict:
    """A per-word tau dict checked: string keys, each value a fraction or a (start, end) pair with start <= end."""
    if not value:
        raise UsageError(f"{what} {dict(value)!r} is an empty dict; give word: fraction pairs, e.g. "
                         f"{{'tiger': 0.3, '{DEFAULT_KEY}': 0.6}}")
    out = {}
    for word, frac in value.items():
        if not isinstance(word, str) or not word.strip():
            raise UsageError(f"{what} {dict(value)!r}: key {word!r} is not a word")
        pair = list(frac) if isinstance(frac, (list, tuple)) else None
        if pair is not None and len(pair) == 2:
            start, end = check_fractions(pair, f"{what}[{word!r}]", frac)
            if start > end:
                raise UsageError(f"{what}[{word!r}] = {frac!r}: start {start} is after end {end}")
            out[word] = (start, end)
        else:
            out[word] = check_fractions([frac], f"{what}[{word!r}]", frac)[0]
    return out


def check_counts(num_inner_steps: int, num_epoch: int, num_ddim_steps: int) -> None:
    """Step counts must be at least 1 (0 is refused, never replaced by a default); T at most the schedule's
    1000 training timesteps (DDIM subsamples them)."""
    if num_inner_steps < 1 or num_epoch < 1 or num_ddim_steps < 1:
        raise UsageError(f"{name('num_inner_steps')}, {name('num_epoch')} and {name('num_ddim_steps')} must be >= 1 "
                         f"(got {num_inner_steps}, {num_epoch}, {num_ddim_steps})")
    check_steps(num_ddim_steps)


def check_steps(num_ddim_steps: int) -> None:
    """1 <= T <= 1000: DDIM picks T of the scheduler's 1000 training timesteps."""
    if not 1 <= num_ddim_steps <= MAX_DDIM_STEPS:
        raise UsageError(f"{name('num_ddim_steps')} {num_ddim_steps} is outside [1, {MAX_DDIM_STEPS}]: DDIM samples T "
                         f"of the scheduler's {MAX_DDIM_STEPS} training timesteps")


def check_finite(value: float, setting: str = "guidance_scale") -> float:
    """A finite float (NaN and inf are refused: they make every latent NaN)."""
    if not math.isfinite(value):
        raise UsageError(f"{name(setting)} {value} is not a finite number")
    return float(value)


def check_seed(seed: int) -> int:
    """A seed torch's generators take as it is: an integer in [0, 2**64 - 1]."""
    low, high = SEED_RANGE
    if isinstance(seed, bool) or not isinstance(seed, int) or not low <= seed <= high:
        raise UsageError(f"{name('seed')} {seed!r} is not an integer in [{low}, 2**64 - 1] (what torch's generators "
                         "accept)")
    return seed


def invert_config(*, prompt: str, image_path: str, model: str, inversion: InversionMethod | str = "stylediffusion",
                  num_ddim_steps: int | None = None, guidance_scale: float | None = None,
                  num_inner_steps: int | None = None, num_epoch: int = 1, seed: int = 0, **settings) -> InvertConfig:
    """The inversion settings, built in one place for every CLI and the API: T, guidance and inner steps default to
    the method's (:class:`InversionMethod`); the counts, guidance and seed checked. ``settings``: the other fields of
    :class:`InvertConfig` (index, crop, model_dir, schedule, ...)."""
    method = to_enum(InversionMethod, inversion, "inversion")
    inner = method.default_inner_steps if num_inner_steps is None else num_inner_steps
    steps = method.default_ddim_steps if num_ddim_steps is None else num_ddim_steps
    guidance = method.default_guidance_scale if guidance_scale is None else guidance_scale
    check_counts(inner, num_epoch, steps)
    check_finite(guidance, "guidance_scale")
    check_seed(seed)
    return InvertConfig(prompt=prompt, image_path=image_path, model=model, inversion=method, num_ddim_steps=steps,
                        guidance_scale=guidance, num_inner_steps=inner, num_epoch=num_epoch, seed=seed, **settings)


def check_size(resolution: int | None, keep_aspect: bool, image_path: str | None = None,
               crop: tuple[int, int, int, int] = (0, 0, 0, 0)) -> None:
    """Size bounds before anything is allocated: --resolution at most 2048; with --keep_aspect the image (after
    ``crop``, read from its header) at most 4:1 and its long side at most 2048 px once scaled. The model's size
    step is checked once it is known (:func:`check_multiple`)."""
    if resolution is not None and resolution > MAX_SIDE:
        raise UsageError(f"{name('resolution')} {resolution} is over the bound of {MAX_SIDE} px a side")
    if not keep_aspect or image_path is None:
        return
    from PIL import Image

    try:
        with Image.open(image_path) as image:
            width, height = image.size
    except OSError:
        return  # unreadable images are refused by the image loader, naming the file
    width, height = width - crop[0] - crop[1], height - crop[2] - crop[3]
    if min(width, height) < 1:
        return  # the crop is refused by the image loader, naming the offsets
    aspect = max(width, height) / min(width, height)
    if aspect > MAX_ASPECT:
        raise UsageError(f"{name('keep_aspect')}: {image_path!r} is {width}x{height}, more elongated than the bound of "
                         f"{MAX_ASPECT}:1; crop it ({name('crop')}) or drop {name('keep_aspect')}")
    if resolution is not None and resolution * aspect > MAX_SIDE:
        raise UsageError(f"{name('keep_aspect')} {name('resolution')} {resolution}: {image_path!r} ({width}x{height}) "
                         f"would be {round(resolution * aspect)} px long, over the bound of {MAX_SIDE}; lower "
                         f"{name('resolution')}")


def check_multiple(resolution: int | None, multiple: int) -> None:
    """--resolution must be a multiple of the model's size step (64 px for SD, 32 for SDXL); the error names the
    two valid neighbours."""
    if resolution is None or (resolution >= multiple and resolution % multiple == 0):
        return
    below, above = resolution // multiple * multiple, (resolution // multiple + 1) * multiple
    valid = f"{below} or {above}" if below >= multiple else f"{above}"
    raise UsageError(f"{name('resolution')} {resolution} is not a multiple of {multiple}, the model's size step; "
                     f"use {valid}")


def check_target_given(target: str | None, edit_type: EditType) -> None:
    """Every edit but StoreAttn needs a target prompt."""
    if edit_type is not EditType.STORE_ATTN and not (target or "").strip():
        raise UsageError(f"{name('target')} is required for {name('edit_type')} {edit_type} (the edited prompt, "
                         "e.g. 'a tiger')")


def check_prompt(prompt: str, tokenizer, is_1word: bool = False, setting: str = "prompt") -> None:
    """Refuse empty prompts, prompts over the tokenizer's 77 tokens (no silent truncation) and, in 1-word
    mode, prompts of more than one word. ``setting``: ``prompt`` or ``target``."""
    what = name(setting)
    if not prompt or not prompt.strip():
        raise UsageError(f"{what} is empty; give the text that describes the image")
    n = len(tokenizer(prompt).input_ids)
    if n > tokenizer.model_max_length:
        raise UsageError(
            f"{what} has {n} tokens (with start/end), more than the text encoder's {tokenizer.model_max_length}; "
            "shorten it (the toolkit refuses rather than silently truncating)"
        )
    if is_1word and len(prompt.split()) != 1:
        raise UsageError(f"{what} {prompt!r} has {len(prompt.split())} words but {name('is_1word')} 1 wants exactly "
                         "one (e.g. 'dog')")


def validate_edit(prompt: str, edit: EditConfig, tokenizer, is_1word: bool = False) -> None:
    """Check an edit request before any network runs (clear errors naming the bad value)."""
    from sdtoolkit.core.words import find_word_tokens, prompt_tokens, word_spans  # torch: not at CLI start-up

    check_prompt(prompt, tokenizer, is_1word)
    per_word = []  # (name, {word: fraction}) of the taus given per word
    for tau, items in edit.tau_lists().items():
        words = [v for v in items if isinstance(v, Mapping)] if tau in PER_WORD_TAUS else []
        numbers = [v for v in items if not isinstance(v, Mapping)] if words else items
        if numbers or not words:
            check_fractions(numbers, name(tau))
        per_word += [(tau, check_per_word(v, name(tau))) for v in words]
    if edit.edit_type is EditType.STORE_ATTN:
        return
    check_target_given(edit.target, edit.edit_type)
    check_prompt(edit.target, tokenizer, is_1word, setting="target")
    if edit.edit_type is EditType.REPLACEMENT:
        src, tgt = word_spans(prompt, tokenizer), word_spans(edit.target, tokenizer)
        if len(src) != len(tgt):
            raise UsageError(
                f"Replacement needs prompts with the same number of words: {prompt!r} has {len(src)}, "
                f"{edit.target!r} has {len(tgt)}; use {name('edit_type')} Refinement for inserted or removed words"
            )
    groups = []
    if edit.blend_word:
        groups += [(prompt, w, f"{name('blend_word')} source") for w in edit.blend_word[0]]
        groups += [(edit.target, w, f"{name('blend_word')} target") for w in edit.blend_word[1]]
    if edit.eq_params:
        groups += [(edit.target, w, name("eq_params")) for w in edit.eq_params[0]]
    groups += [(edit.target, w, name(tau)) for tau, value in per_word for w in value if w != DEFAULT_KEY]
    for text, word, what in groups:
        try:
            find_word_tokens(text, word, tokenizer)
        except ValueError:
            tokens = [t for t in prompt_tokens(text, tokenizer)[1:-1]]
            raise UsageError(f"{what} word {word!r} is not in {text!r}; its tokens are: {tokens}") from None


def check_output_names(cfg: InvertConfig, edit: EditConfig | None = None, what: str | None = None) -> None:
    """The file and folder names built from the index, the prompt and the target: one name each (no path
    separator, so they stay in their folders) within the file system's 255 bytes. ``what``: the data's label of
    the index (a CSV column, a PIE-Bench case key); default the index setting's name."""
    what = what or name("index")
    check_name(str(cfg.index), what)
    check_name(cfg.path().name, what)
    if edit is not None:
        text = "prompt" if edit.edit_type is EditType.STORE_ATTN else "target"
        label = f"{name('index')} and {name(text)}"
        check_name(edit.folder(cfg.index, cfg.prompt).name, f"{label} (the edit folder's name)")


def check_outputs(cfg: InvertConfig, edit: EditConfig | None, training: bool) -> None:
    """Before any model loads: every output location of a run can be created and written (training: the
    result's folder under --model_dir; editing: --outdir, and --model_dir too when --baselines may train)."""
    if training:
        check_writable_dir(cfg.folder(), name("model_dir"))
    if edit is not None and edit.baselines:
        check_writable_dir(replace(cfg, inversion=InversionMethod.NULLTEXT).folder(), name("model_dir"))
    if not training and edit is not None:
        check_writable_dir(edit.outdir, name("outdir"))
