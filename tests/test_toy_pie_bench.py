"""Toy PIE-Bench writer: the folder reads back through the PIE-Bench reader, masks cover the edited region."""
from __future__ import annotations

import json

import numpy as np

from sdtoolkit.jobs.pie_data import load_benchmark
from toyworld.pie_bench import EDIT_TYPE_IDS, load_ground_truth, main, share_inversions, target_image, write_toy_pie_bench
from toyworld.scenes import render


def test_toy_pie_bench_reads_back_with_ground_truth(tmp_path):
    write_toy_pie_bench(tmp_path, n=2, seed=0, size=32)
    bench = load_benchmark(tmp_path)
    assert not bench.failures and len(bench.cases) == 6
    assert sorted(c.editing_type_id for c in bench.cases) == ["1", "1", "6", "6", "8", "8"]
    truth = load_ground_truth(tmp_path)
    for case in bench.cases:
        gt = truth[case.key]
        assert case.editing_type_id == EDIT_TYPE_IDS[gt.kind]
        assert case.source_words == (gt.source_word,) and case.target_words == (gt.target_word,)
        assert case.image_size == (32, 32)
        assert case.blend_words() == (None if gt.kind == "background" else ((gt.source_word,), (gt.target_word,)))
        source, source_masks = render(gt.source_scene, 32)
        target, _ = render(gt.target_scene, 32)
        np.testing.assert_array_equal(target_image(gt), np.asarray(target))
        changed = np.any(np.asarray(source) != np.asarray(target), axis=-1)
        mask = case.mask().astype(bool)
        assert mask[changed].all()  # every pixel the edit changes is in the edited region
        if gt.kind == "background":
            assert not mask[1:-1, 1:-1][source_masks[0][1:-1, 1:-1] & ~changed[1:-1, 1:-1]].any()
        else:
            assert mask.mean() < 0.5


def test_toy_pie_bench_cli_refuses_a_written_folder(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--n", "1"]) == 0
    assert main(["--out", str(tmp_path), "--n", "1"]) == 2
    assert "already holds mapping_file.json" in capsys.readouterr().err


def test_share_inversions_gives_each_case_its_scenes_result(tmp_path):
    """A scene's one saved inversion is copied to its other cases' file names (sidecar: their index, shared_from);
    other scenes' cases and existing files are left alone."""
    mapping = write_toy_pie_bench(tmp_path / "data", 2, 0, 16)
    first, second = list(mapping)[:3], list(mapping)[3:]
    folder = tmp_path / "inv" / "model_learnv"
    folder.mkdir(parents=True)
    (folder / f"model-inner100-epoch1-learnv-[{first[0]}].safetensors").write_bytes(b"tensors")
    (folder / f"model-inner100-epoch1-learnv-[{first[0]}].json").write_text(json.dumps({"index": first[0]}))
    assert share_inversions(tmp_path / "data", tmp_path / "inv") == 2
    for key in first[1:]:
        assert (folder / f"model-inner100-epoch1-learnv-[{key}].safetensors").read_bytes() == b"tensors"
        sidecar = json.loads((folder / f"model-inner100-epoch1-learnv-[{key}].json").read_text())
        assert sidecar == {"index": key, "shared_from": first[0]}
    assert not any(f"[{key}]" in p.name for p in folder.iterdir() for key in second)
    assert share_inversions(tmp_path / "data", tmp_path / "inv") == 0
