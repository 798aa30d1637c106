"""scripts/convert_reference_pth.py: a mapping-network .pth in the reference's layout (torch.save of a list of
per-step nn.ModuleDict) becomes model_learnv/…-[N].safetensors + sidecar that the usual edit loads; anything else
is refused with exit 2, one line and nothing written."""
from __future__ import annotations

import copy
import os
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from sdtoolkit.cli import convert_reference, stylediffusion
from sdtoolkit.cli import flags as cli
from sdtoolkit.core.settings import InvertConfig
from sdtoolkit.jobs.invert import load_inversion, load_source

REPO = Path(__file__).resolve().parent.parent
CAT = str(REPO / "example_images" / "cat.jpg")
PROMPT = "a cat sitting on a rug"
STEPS = 4


def reference_steps(num_steps: int, tokens: int, max_length: int = 77) -> list[nn.ModuleDict]:
    """The reference's Trainer.embedding: per step ModuleDict(conv_start, conv_block=Sequential(Sequential(Conv1d,
    BatchNorm1d, LeakyReLU)), conv_end), in training mode; random weights (BatchNorm affine too)."""
    width = 2 * max_length
    block = nn.Sequential(nn.Conv1d(width, width, kernel_size=1), nn.BatchNorm1d(width, affine=True), nn.LeakyReLU())
    steps = []
    for _ in range(num_steps):
        step = nn.ModuleDict({"conv_start": nn.Conv1d(tokens, width, kernel_size=1),
                              "conv_block": nn.Sequential(copy.deepcopy(block)),
                              "conv_end": nn.Conv1d(width, width, kernel_size=1)}).train().requires_grad_(False)
        for p in step.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
        steps.append(step)
    return steps


class Evil:
    def __reduce__(self):
        return os.system, ("touch PWNED",)


@pytest.fixture
def convert(tiny, tmp_path, monkeypatch, capsys):
    """Run the converter's main in process (the session tiny model); returns (code, out, err)."""
    import sdtoolkit.core.models

    monkeypatch.setattr(sdtoolkit.core.models, "load_models", lambda model, *a, **k: tiny)
    monkeypatch.chdir(tmp_path)

    def run(pth: Path, *extra: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = cli.run_main(convert_reference.main, [str(pth), "--prompt", PROMPT, "--image_path", CAT, "--index", "5",
                                                     "--model", "tiny", "--num_ddim_steps", str(STEPS),
                                                     "--model_dir", "models", *extra])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture(scope="module")
def tokens(tiny) -> int:
    from sdtoolkit.core.images import load_image, pil_to_tensor

    return tiny.image_features(pil_to_tensor(load_image(CAT, tiny.image_size))).shape[1]


def test_round_trip_then_the_usual_edit_uses_it(convert, tiny, tokens, tmp_path):
    steps = reference_steps(STEPS, tokens, tiny.max_length)
    torch.save(steps, tmp_path / "model-inner100-epoch1-learnv-[5].pth")
    code, out, err = convert(tmp_path / "model-inner100-epoch1-learnv-[5].pth")
    assert code == 0, err
    saved = tmp_path / "models" / "model_learnv" / "model-inner100-epoch1-learnv-[5].safetensors"
    assert f"saved models/model_learnv/{saved.name}" in out and saved.with_suffix(".json").is_file()

    cfg = InvertConfig(prompt=PROMPT, image_path=CAT, index=5, model="tiny", num_ddim_steps=STEPS,
                       model_dir=str(tmp_path / "models"))
    source = load_source(tiny, CAT)
    inv, side = load_inversion(tiny, cfg, source, tiny.encode_text([PROMPT]).float(), tiny.encode_text([""]).float())
    assert side["converted_from"]["file"].endswith(".pth") and set(side["reconstruction"]) == {
        "ddim_cfg_latent_mse", "trained_latent_mse"}
    features = torch.randn(1, tokens, 32)
    with torch.no_grad():
        for i, step in enumerate(steps):
            ref = features
            for block in step.values():  # the reference's forward_embed
                ref = block(ref)
            scale, shift = inv.mapping.nets[i](features)
            torch.testing.assert_close(torch.cat([scale, shift], dim=1), ref, rtol=1e-5, atol=1e-6)

    code = cli.run_main(stylediffusion.main, ["--is_train", "", "--index", "5", "--prompt", PROMPT, "--image_path", CAT,
                                              "--model", "tiny", "--num_ddim_steps", str(STEPS), "--model_dir", "models",
                                              "--target", "a dog sitting on a rug", "--outdir", "out"])
    assert code == 0
    assert len(list((tmp_path / "out" / "5 a dog sitting on a rug").glob("*.png"))) == 2


def _refused(code: int, out: str, err: str, tmp_path: Path, *needles: str) -> None:
    lines = [l for l in err.splitlines() if l.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    assert "Traceback" not in err + out
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not (tmp_path / "models").exists()


def test_a_pickle_with_other_globals_is_refused_without_running_it(convert, tmp_path):
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump([Evil()], f)
    _refused(*convert(tmp_path / "evil.pth"), tmp_path, "evil.pth", "not a reference mapping-network file")
    assert not (tmp_path / "PWNED").exists()
    torch.save([nn.ModuleDict({"conv_start": nn.Linear(2, 2)})], tmp_path / "linear.pth")
    _refused(*convert(tmp_path / "linear.pth"), tmp_path, "linear.pth", "Linear")
    torch.save({"conv_start.weight": torch.zeros(1)}, tmp_path / "state.pth")
    _refused(*convert(tmp_path / "state.pth"), tmp_path, "not a list of nn.ModuleDict")
    (tmp_path / "text.pth").write_text("not a pickle")
    _refused(*convert(tmp_path / "text.pth"), tmp_path, "text.pth")


def test_wrong_shapes_and_layouts_are_refused(convert, tiny, tokens, tmp_path):
    torch.save(reference_steps(STEPS, 197 if tokens != 197 else 50, tiny.max_length), tmp_path / "sd.pth")
    _refused(*convert(tmp_path / "sd.pth"), tmp_path, "step 0", "conv_start.weight")
    steps = reference_steps(STEPS, tokens, tiny.max_length)
    steps[2]["conv_block"].append(copy.deepcopy(steps[2]["conv_block"][0]))  # BLOCK_NUM 2
    torch.save(steps, tmp_path / "two_blocks.pth")
    _refused(*convert(tmp_path / "two_blocks.pth"), tmp_path, "step 2", "conv_block")


def test_wrong_step_count_is_refused(convert, tiny, tokens, tmp_path):
    torch.save(reference_steps(STEPS + 1, tokens, tiny.max_length), tmp_path / "five.pth")
    _refused(*convert(tmp_path / "five.pth"), tmp_path, f"holds {STEPS + 1} steps", f"--num_ddim_steps {STEPS + 1}")
