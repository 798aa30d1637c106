"""Toy world: scene generator ground truth, caption edits, and a tiny end-to-end training run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from toyworld.scenes import (
    COLOURS,
    EDIT_KINDS,
    HELDOUT_SEED_START,
    PALETTE,
    SHAPES,
    caption,
    edit_scene,
    nearest_colour,
    render,
    scene_from_seed,
)



def covering_seeds(candidates: range = range(300)) -> list[int]:
    """The fewest seeds (greedy) whose scenes show every shape, object colour, background colour and object count:
    parametrising over them covers the generator's cases; :func:`test_invariants_over_many_seeds` sweeps more."""
    def features(seed: int) -> set[tuple[str, object]]:
        scene = scene_from_seed(seed)
        return ({("shape", o.shape) for o in scene.objects} | {("colour", o.colour) for o in scene.objects}
                | {("background", scene.background), ("count", len(scene.objects))})

    table = {seed: features(seed) for seed in candidates}
    wanted = set().union(*table.values())
    assert {("shape", s) for s in SHAPES} | {("count", 1), ("count", 2)} <= wanted
    chosen: list[int] = []
    covered: set[tuple[str, object]] = set()
    while covered != wanted:
        seed = max(table, key=lambda s: (len(table[s] - covered), -s))
        chosen.append(seed)
        covered |= table[seed]
    return sorted(chosen)


SEEDS = covering_seeds()


def _erode(mask: np.ndarray) -> np.ndarray:
    """Pixels whose 4-neighbours are all in ``mask``."""
    m = np.pad(mask, 1)
    return mask & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]


@pytest.mark.parametrize("seed", SEEDS)
def test_caption_matches_objects(seed: int) -> None:
    check_caption(seed)


def check_caption(seed: int) -> None:
    scene = scene_from_seed(seed)
    text = caption(scene)
    expected = " and ".join(f"a {o.colour} {o.shape}" for o in scene.objects)
    assert text == f"{expected} on a {scene.background} background"
    assert 1 <= len(scene.objects) <= 2
    colours = [o.colour for o in scene.objects]
    assert len(set(colours)) == len(colours) and scene.background not in colours
    assert len({o.shape for o in scene.objects}) == len(scene.objects)
    assert all(o.shape in SHAPES and o.colour in COLOURS for o in scene.objects)
    # caption order is left to right
    xs = [o.centre[0] for o in scene.objects]
    assert xs == sorted(xs)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("size", [64, 48])
def test_masks_and_pixels(seed: int, size: int) -> None:
    check_masks_and_pixels(seed, size)


def check_masks_and_pixels(seed: int, size: int) -> None:
    scene = scene_from_seed(seed)
    image, masks = render(scene, size)
    pixels = np.asarray(image)
    assert image.mode == "RGB" and image.size == (size, size)
    assert len(masks) == len(scene.objects)
    union = np.zeros((size, size), dtype=bool)
    for obj, mask in zip(scene.objects, masks):
        assert mask.shape == (size, size) and mask.dtype == bool
        assert 0 < mask.sum() < size * size
        assert not (union & mask).any(), "objects overlap"
        union |= mask
        ys, xs = np.nonzero(mask)
        r = obj.radius * size * 1.3
        assert xs.min() >= obj.centre[0] * size - r - 1 and xs.max() <= obj.centre[0] * size + r + 1
        assert ys.min() >= obj.centre[1] * size - r - 1 and ys.max() <= obj.centre[1] * size + r + 1
        interior = _erode(mask)
        assert interior.any()
        exact = (pixels[interior] == np.asarray(PALETTE[obj.colour], dtype=np.uint8)).all(-1)
        assert exact.mean() > 0.95  # only antialiased concave corners (star) may differ
        assert all(nearest_colour(px) == obj.colour for px in pixels[interior])
        assert nearest_colour(pixels[mask].mean(0)) == obj.colour
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    background = np.ones((size, size), dtype=bool)
    for obj in scene.objects:  # every shape lies within 1.35 radii of its centre
        reach = 1.35 * obj.radius * size + 1
        background &= (xx - obj.centre[0] * size) ** 2 + (yy - obj.centre[1] * size) ** 2 > reach**2
    assert background.sum() > size * size / 3
    assert (pixels[background] == np.asarray(PALETTE[scene.background], dtype=np.uint8)).all()


def test_determinism() -> None:
    for seed in (0, 7, HELDOUT_SEED_START + 3):
        a, b = scene_from_seed(seed), scene_from_seed(seed)
        assert a == b
        ia, ma = render(a)
        ib, mb = render(b)
        assert np.array_equal(np.asarray(ia), np.asarray(ib))
        assert all(np.array_equal(x, y) for x, y in zip(ma, mb))
    assert len({caption(scene_from_seed(s)) for s in range(50)}) > 20


@pytest.mark.parametrize("kind", EDIT_KINDS)
@pytest.mark.parametrize("seed", SEEDS)
def test_edit_scene_changes_exactly_what_it_says(kind: str, seed: int) -> None:
    check_edit(kind, seed)


def test_invariants_over_many_seeds() -> None:
    """The same checks over 40 seeds (one test: rare layouts such as near-overlaps are still exercised)."""
    for seed in range(40):
        check_caption(seed)
        check_masks_and_pixels(seed, 64)
        for kind in EDIT_KINDS:
            check_edit(kind, seed)


def check_edit(kind: str, seed: int) -> None:
    scene = scene_from_seed(seed)
    new, src, tgt = edit_scene(scene, kind, np.random.default_rng(seed))
    assert src != tgt
    old_words, new_words = caption(scene).split(), caption(new).split()
    assert old_words.count(src) == 1 and new_words.count(tgt) == 1
    assert caption(new) == caption(scene).replace(f" {src} ", f" {tgt} ", 1)
    first, nfirst = scene.objects[0], new.objects[0]
    assert new.objects[1:] == scene.objects[1:]
    assert nfirst.centre == first.centre and nfirst.radius == first.radius
    if kind == "colour":
        assert (first.colour, nfirst.colour) == (src, tgt)
        assert nfirst.shape == first.shape and new.background == scene.background
    elif kind == "shape":
        assert (first.shape, nfirst.shape) == (src, tgt)
        assert nfirst.colour == first.colour and new.background == scene.background
    else:
        assert (scene.background, new.background) == (src, tgt)
        assert nfirst == first
    colours = [o.colour for o in new.objects]
    assert len(set(colours)) == len(colours) and new.background not in colours
    assert len({o.shape for o in new.objects}) == len(new.objects)


def test_edit_scene_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError):
        edit_scene(scene_from_seed(0), "size", np.random.default_rng(0))  # type: ignore[arg-type]


def test_training_seeds_are_never_held_out() -> None:
    from toyworld.train_toy import train_seeds

    for stage in ("vae", "unet", "export"):
        for step in range(20):
            s = train_seeds(0, stage, step, 64)
            assert s.min() >= 0 and s.max() < HELDOUT_SEED_START
    assert np.array_equal(train_seeds(3, "vae", 5, 8), train_seeds(3, "vae", 5, 8))


def test_measure_checks_pass_on_ground_truth() -> None:
    from toyworld.measure import colour_checks, summarise

    recs = []
    for seed in range(HELDOUT_SEED_START, HELDOUT_SEED_START + 12):
        scene = scene_from_seed(seed)
        recs.append(colour_checks(np.asarray(render(scene)[0]), scene))
    summary = summarise(recs)["all"]
    for key in ("colour_ok", "core_colour_ok", "majority_colour_ok", "background_ok", "all_ok"):
        assert summary[key] == 1.0, key
    # a flat image of the background colour fails the object test
    scene = scene_from_seed(HELDOUT_SEED_START)
    flat = np.broadcast_to(np.asarray(PALETTE[scene.background], dtype=np.uint8), (64, 64, 3)).copy()
    assert not colour_checks(flat, scene)["colour_ok"]


def test_tiny_training_run_writes_loadable_folder(tmp_path: Path) -> None:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPImageProcessor, CLIPTextModel, CLIPTokenizer, CLIPVisionModel

    from toyworld.train_toy import main

    out, ckpt = tmp_path / "model", tmp_path / "ckpt"
    common = ["--size", "tiny", "--out", str(out), "--ckpt_dir", str(ckpt), "--threads", str(torch.get_num_threads()),
              "--stats_count", "32"]
    main(["--stage", "vae", "--steps", "2", *common])
    main(["--stage", "vae", "--steps", "3", "--resume", *common])
    assert json.loads((ckpt / "vae.json").read_text())["step"] == 3
    main(["--stage", "unet", "--steps", "2", "--pool", "16", "--batch_size", "4", *common])

    vae = AutoencoderKL.from_pretrained(out, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(out, subfolder="unet")
    text_encoder = CLIPTextModel.from_pretrained(out, subfolder="text_encoder")
    tokenizer = CLIPTokenizer.from_pretrained(out, subfolder="tokenizer")
    image_encoder = CLIPVisionModel.from_pretrained(out, subfolder="image_encoder")
    processor = CLIPImageProcessor.from_pretrained(out, subfolder="image_encoder")
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    sched = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert sched["_class_name"] == "DDIMScheduler" and sched["beta_schedule"] == "scaled_linear"
    assert (sched["beta_start"], sched["beta_end"], sched["clip_sample"], sched["set_alpha_to_one"]) == (
        0.00085, 0.012, False, False)
    training = json.loads((out / "TRAINING.json").read_text())
    assert training["seed"] == 0 and training["unet"]["steps"] == 2 and "machine" in training
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pt"))

    ids = tokenizer(["a red circle on a blue background"], padding="max_length", max_length=77,
                    return_tensors="pt").input_ids
    assert ids.shape == (1, 77) and ids[0, 0] == 49406
    with torch.no_grad():
        cond = text_encoder(ids).last_hidden_state
        assert cond.shape == (1, 77, unet.config.cross_attention_dim)
        latent = vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mean
        assert latent.shape == (1, 4, 16, 16) and unet.config.sample_size == 16
        eps = unet(latent, 10, encoder_hidden_states=cond).sample
        assert eps.shape == latent.shape
        from PIL import Image

        pixels = processor(images=Image.new("RGB", (64, 64)), return_tensors="pt").pixel_values
        tokens = image_encoder(pixels).last_hidden_state
        assert tokens.shape == (1, 197, text_encoder.config.hidden_size)
