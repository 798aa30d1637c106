"""Toy PIE-Bench: held-out toy scenes and their edits written in PIE-Bench's folder format.

    python -m toyworld.pie_bench --out toy_pie --n 20

For ``--n`` held-out scenes (seeds ``HELDOUT_SEED_START + seed·10_000 + k``, the scenes and edits of
the former toy benchmark's) and each edit kind of :func:`toyworld.scenes.edit_scene`, one PIE-Bench case:

==========  ===============  =================================================  ==================
edit kind   editing_type_id  PIE-Bench's name                                   blended_word
==========  ===============  =================================================  ==================
colour      ``"6"``          change attribute color (first object's colour)     ``"<src> <tgt>"``
shape       ``"1"``          change object (first object's shape)               ``"<src> <tgt>"``
background  ``"8"``          change background (background colour)              ``""`` (none)
==========  ===============  =================================================  ==================

The folder holds what PIE-Bench holds, so ``sdtoolkit.jobs.pie_data`` and the PIE-Bench runner and
metrics read it unchanged:

* ``mapping_file.json``: per key (12 digits: the type id, then the case number) ``image_path``
  (``{type_id}_{kind}/{key}.png``), ``original_prompt`` / ``editing_prompt`` (the scene's caption and the
  edited scene's caption, the changed word in [brackets]), ``editing_instruction``, ``editing_type_id``,
  ``blended_word`` (the toy benchmark's blend choice: the edited word for object edits, none for background
  edits) and ``mask``: run-length pairs of the edited region, i.e. the edited object's masks before and
  after the edit (for background edits: everything outside every object) together with every pixel whose
  ground-truth colour changes (antialiased rims).
* ``annotation_images/{image_path}``: the source scene.

Sizes: images are written at their native size (``--size``, 64 px by default), not 512: the masks run
over the image's own H·W pixels, and the PIE-Bench reader decodes every mask at its image's size (real
PIE-Bench images are 512×512, so nothing changes there). The runner's 4-panel outputs are then 4 panels
of ``--size`` px, and the metrics take the bottom-right ``--size`` square as the edited image.

Ground truth beside the benchmark files (not part of PIE-Bench's format, ignored by its readers):
``toy_ground_truth.json`` (per key: scene seed, edit kind, source and target words, both scenes, every
object's mask in both scenes as run-length pairs, the palette) and
``ground_truth/{image_path}`` (the rendered target scene), so edit success and preservation can be
scored against exact ground truth from the same run (:func:`load_ground_truth`;
``sdtoolkit.evaluation.toy_scores`` reads the file itself, ``pie_metrics`` adds those scores).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from sdtoolkit.core.errors import UsageError
from sdtoolkit.jobs.pie_data import IMAGES_DIR, MAPPING_FILE, encode_mask
from sdtoolkit.core.io import save_image, write_json
from toyworld.scenes import EDIT_KINDS, HELDOUT_SEED_START, PALETTE, Scene, SceneObject, caption, edit_scene, render, scene_from_seed

EDIT_TYPE_IDS: dict[str, str] = {"colour": "6", "shape": "1", "background": "8"}
"""PIE-Bench editing_type_id of each toy edit kind."""
SEED_STRIDE = 10_000
GROUND_TRUTH_FILE = "toy_ground_truth.json"
GROUND_TRUTH_DIR = "ground_truth"


def scene_seed(seed: int, k: int) -> int:
    """Seed of the k-th held-out scene of run ``seed`` (as the toy benchmark draws them)."""
    return HELDOUT_SEED_START + seed * SEED_STRIDE + k


def bracket(prompt: str, word: str) -> str:
    """``prompt`` with its one occurrence of ``word`` (a whole word) in square brackets."""
    words = prompt.split()
    if words.count(word) != 1:
        raise ValueError(f"{word!r} occurs {words.count(word)} times in {prompt!r}; expected once")
    return " ".join(f"[{w}]" if w == word else w for w in words)


def edit_region(kind: str, source_masks: Sequence[np.ndarray], target_masks: Sequence[np.ndarray],
                source_image: np.ndarray, target_image: np.ndarray) -> np.ndarray:
    """(H, W) bool: the region an edit may change.

    Object edits: the first object's masks before and after; background edits: outside every object of
    both scenes. Either way together with every pixel whose ground-truth colour changes.
    """
    if kind == "background":
        objects = np.logical_or.reduce([np.asarray(m, dtype=bool) for m in (*source_masks, *target_masks)])
        region = ~objects
    elif kind in ("colour", "shape"):
        region = np.asarray(source_masks[0], dtype=bool) | np.asarray(target_masks[0], dtype=bool)
    else:
        raise ValueError(f"unknown edit kind {kind!r}; expected one of {EDIT_KINDS}")
    changed = np.any(np.asarray(source_image) != np.asarray(target_image), axis=-1)  # (H, W, 3) -> (H, W)
    return region | changed


def instruction(kind: str, scene: Scene, source_word: str, target_word: str) -> str:
    """The editing instruction of an edit, in words."""
    if kind == "colour":
        return f"Make the {source_word} {scene.objects[0].shape} {target_word}"
    if kind == "shape":
        return f"Turn the {scene.objects[0].colour} {source_word} into a {target_word}"
    return f"Change the background from {source_word} to {target_word}"


@dataclass(frozen=True)
class ToyTruth:
    """Ground truth of one toy PIE-Bench case."""

    key: str
    seed: int
    kind: str
    source_word: str
    target_word: str
    source_scene: Scene
    target_scene: Scene
    target_image: Path


def write_toy_pie_bench(out: Path, n: int, seed: int = 0, size: int = 64) -> dict[str, dict]:
    """Write ``n`` scenes × 3 edits as a PIE-Bench folder in ``out``; return the mapping written."""
    mapping: dict[str, dict] = {}
    truth: dict[str, dict] = {}
    number = 0
    for k in range(n):
        scene_id = scene_seed(seed, k)
        scene = scene_from_seed(scene_id)
        prompt = caption(scene)
        image, masks = render(scene, size)
        rng = np.random.default_rng([scene_id, 1])  # the toy benchmark's edits of this scene
        for kind in EDIT_KINDS:
            new, source_word, target_word = edit_scene(scene, kind, rng)
            target_image, target_masks = render(new, size)
            type_id = EDIT_TYPE_IDS[kind]
            key = f"{type_id}{number:011d}"
            number += 1
            image_path = f"{type_id}_{kind}/{key}.png"
            region = edit_region(kind, masks, target_masks, np.asarray(image), np.asarray(target_image))
            mapping[key] = {
                "image_path": image_path,
                "original_prompt": bracket(prompt, source_word),
                "editing_prompt": bracket(caption(new), target_word),
                "editing_instruction": instruction(kind, scene, source_word, target_word),
                "editing_type_id": type_id,
                "blended_word": "" if kind == "background" else f"{source_word} {target_word}",
                "mask": encode_mask(region),
            }
            truth[key] = {"seed": scene_id, "kind": kind, "source_word": source_word, "target_word": target_word,
                          "source_scene": asdict(scene), "target_scene": asdict(new),
                          "target_image": f"{GROUND_TRUTH_DIR}/{image_path}",
                          "source_masks": [encode_mask(np.asarray(m, dtype=bool)) for m in masks],
                          "target_masks": [encode_mask(np.asarray(m, dtype=bool)) for m in target_masks],
                          "palette": {name: list(rgb) for name, rgb in PALETTE.items()}}
            save_image(out / IMAGES_DIR / image_path, image)
            save_image(out / GROUND_TRUTH_DIR / image_path, target_image)
    write_json(out / GROUND_TRUTH_FILE, truth)
    write_json(out / MAPPING_FILE, mapping)
    return mapping


def _scene(data: dict) -> Scene:
    """A Scene from its asdict() form."""
    objects = tuple(SceneObject(shape=o["shape"], colour=o["colour"], centre=tuple(o["centre"]), radius=o["radius"])
                    for o in data["objects"])
    return Scene(objects=objects, background=data["background"])


def load_ground_truth(data_path: str | Path) -> dict[str, ToyTruth]:
    """The ground truth of a toy PIE-Bench folder by case key; UsageError when it has none."""
    path = Path(data_path) / GROUND_TRUTH_FILE
    if not path.is_file():
        raise UsageError(f"{data_path}: no {GROUND_TRUTH_FILE} (not a toy PIE-Bench folder)")
    data = json.loads(path.read_text(encoding="utf-8"))
    return {key: ToyTruth(key=key, seed=int(item["seed"]), kind=item["kind"], source_word=item["source_word"],
                          target_word=item["target_word"], source_scene=_scene(item["source_scene"]),
                          target_scene=_scene(item["target_scene"]), target_image=Path(data_path) / item["target_image"])
            for key, item in data.items()}


def target_image(truth: ToyTruth) -> np.ndarray:
    """The rendered ground-truth target scene of a case, (H, W, 3) uint8."""
    with Image.open(truth.target_image) as image:
        return np.asarray(image.convert("RGB"))


def share_inversions(data: Path, inversion_dir: Path) -> int:
    """Give every case the saved inversion of its scene: the cases of one scene share the source image and prompt,
    but the PIE-Bench runner names an inversion by case key, so it would train the same scene once per edit. For
    each result file ``…-[KEY].safetensors`` under ``inversion_dir`` (+ its sidecar), a copy is written for every other
    case of the same source (image bytes and source prompt) that has none. Returns the copies written."""
    mapping = json.loads((data / MAPPING_FILE).read_text())
    scenes: dict[tuple[bytes, str], list[str]] = {}
    for key, item in mapping.items():
        source = ((data / IMAGES_DIR / item["image_path"]).read_bytes(), item["original_prompt"].replace("[", "").replace("]", ""))
        scenes.setdefault(source, []).append(key)
    written = 0
    for keys in scenes.values():
        for key in keys:
            for result in inversion_dir.glob(f"model_*/*-[[]{key}[]].safetensors"):
                sidecar = json.loads(result.with_suffix(".json").read_text())
                for other in keys:
                    target = result.with_name(result.name.replace(f"[{key}]", f"[{other}]"))
                    if other == key or target.exists():
                        continue
                    target.write_bytes(result.read_bytes())
                    write_json(target.with_suffix(".json"), {**sidecar, "index": other, "shared_from": key})
                    written += 1
    return written


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        prog="python -m toyworld.pie_bench",
        description="Write held-out toy scenes and their colour / shape / background edits as a PIE-Bench folder "
                    "(editing_type_id 6 / 1 / 8), with ground-truth target scenes beside it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", type=Path, required=True, help="folder to write (mapping_file.json, annotation_images/)")
    parser.add_argument("--n", type=int, default=20, help="number of scenes (3 cases each)")
    parser.add_argument("--seed", type=int, default=0, help=f"scene seeds are {HELDOUT_SEED_START} + seed*{SEED_STRIDE} + k")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (the toy model's is 64)")
    parser.add_argument("--share_inversions", type=Path, default=None, metavar="INVERSION_DIR",
                        help="instead of writing --out: copy each scene's saved inversion under INVERSION_DIR to the "
                             "scene's other cases (the runner then edits them without training the scene again)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Write the folder; exit 2 with one line for bad input."""
    args = parse_args(argv)
    if args.share_inversions is not None:
        print(f"shared {share_inversions(args.out, args.share_inversions)} inversions under {args.share_inversions}")
        return 0
    try:
        if args.n < 1 or args.size < 8 or args.seed < 0:
            raise UsageError(f"--n {args.n} --size {args.size} --seed {args.seed}: need n >= 1, size >= 8, seed >= 0")
        if (args.out / MAPPING_FILE).exists():
            raise UsageError(f"--out {args.out} already holds {MAPPING_FILE}; choose an empty folder")
    except UsageError as err:
        print(f"toyworld.pie_bench: error: {err}", file=sys.stderr)
        return 2
    mapping = write_toy_pie_bench(args.out, args.n, args.seed, args.size)
    print(f"wrote {len(mapping)} cases ({args.n} scenes x {len(EDIT_KINDS)} edits, {args.size} px) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
