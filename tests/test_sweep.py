"""Sweeps share the source branch: K tau combinations sampled as one batch [source, target × K] give each combination
the images of its own separate edit (max pixel difference <= 1 in fp32), with the source rows through the UNet once."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sdtoolkit.core.settings import EditConfig, EditType, InversionMethod, InvertConfig, Taus
from sdtoolkit.jobs.edit import SWEEP_TARGETS, edit_latents, run_edit, sweep_chunks, sweep_latents
from sdtoolkit.jobs.invert import fit, load_source
from sdtoolkit.methods.inversions import ProxNPIInversion

from conftest import CAT

T = 5
SOURCE = "a cat sitting on a rug"
DOG = "a dog sitting on a rug"


@pytest.fixture(scope="module")
def source(tiny):
    return load_source(tiny, CAT)


@pytest.fixture(scope="module")
def inversions(tiny, source) -> dict:
    """Each sharing method's inversion of the cat on the tiny model (T = 5, 2 inner steps), fitted once when asked."""
    cache: dict = {}

    def get(method: InversionMethod):
        if method not in cache:
            cfg = InvertConfig(prompt=SOURCE, image_path=CAT, model="tiny", inversion=method, num_ddim_steps=T,
                               num_inner_steps=2)
            cache[method] = fit(tiny, cfg, source, progress=False).inversion
        return cache[method]

    return get


def pixels(models, z: torch.Tensor) -> np.ndarray:
    """Latents (B, 4, h, w) → 8-bit images (B, H, W, 3) as the CLIs round them."""
    images = models.decode_latent(z).clamp(0, 1)
    return (images.permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.int16)


COMBOS = [Taus(0.2, {"dog": 0.2, "default_": 0.8}, 0.4, 0.0), Taus(0.8, 0.4, 0.8, 0.6)]
"""Two combinations that differ in every tau (the first with a per-word tau_c), so each row's own value path,
cross- and self-attention steps and unconditional injection are exercised."""


def assert_each_combination_is_its_own_edit(models, inv, edit: EditConfig, blend_mask=None) -> None:
    texts = models.encode_text([SOURCE, edit.target]).float()
    shared = sweep_latents(models, inv, SOURCE, edit, COMBOS, texts, T, blend_mask=blend_mask)
    assert shared.shape[0] == 1 + len(COMBOS)
    for k, taus in enumerate(COMBOS, start=1):
        alone = edit_latents(models, inv, SOURCE, edit, taus, texts, T, blend_mask=blend_mask)
        diff = int(np.abs(pixels(models, torch.cat([shared[:1], shared[k:k + 1]])) - pixels(models, alone)).max())
        assert diff <= 1, f"{taus.stem()}: max pixel difference {diff}"


EDITS = {
    "replacement": EditConfig(target=DOG),
    "refinement": EditConfig(target="a big dog sitting on a rug", edit_type=EditType.REFINEMENT),
    "blend words and reweighting": EditConfig(target=DOG, blend_word=(("cat",), ("dog",)),
                                              eq_params=(("dog",), (2.0,))),
}


@pytest.mark.parametrize("name", EDITS)
def test_stylediffusion_sweep_gives_every_combination_its_own_edit(tiny, inversions, name):
    """Each target row keeps its own tau_v (learned value input), taus (tau_c per word too) and controller state
    (LocalBlend's attention store and mask)."""
    assert_each_combination_is_its_own_edit(tiny, inversions(InversionMethod.STYLEDIFFUSION), EDITS[name])


def test_user_mask_sweep_gives_every_combination_its_own_edit(tiny, inversions):
    mask = torch.zeros(tiny.image_size, tiny.image_size)
    mask[8:40, 16:48] = 1.0
    assert_each_combination_is_its_own_edit(tiny, inversions(InversionMethod.STYLEDIFFUSION), EditConfig(target=DOG),
                                            blend_mask=mask)


@pytest.mark.parametrize("method", [InversionMethod.EDICT, InversionMethod.EDIT_FRIENDLY])
def test_methods_with_their_own_sampling_share_the_source_too(tiny, inversions, method):
    """EDICT's coupled pair and edit-friendly DDPM's noise maps and per-row guidance act row by row."""
    assert inversions(method).shares_source
    assert_each_combination_is_its_own_edit(tiny, inversions(method), EditConfig(target=DOG,
                                                                                 blend_word=(("cat",), ("dog",))))


def test_a_sweep_sends_the_source_rows_through_the_unet_once(tiny, inversions):
    """UNet rows (batch elements) of a K = 3 sweep: (1 + 3) per branch and step, not 3 × 2."""
    rows: list[int] = []
    hook = tiny.unet.register_forward_pre_hook(lambda module, args: rows.append(int(args[0].shape[0])))
    try:
        texts = tiny.encode_text([SOURCE, DOG]).float()
        sweep_latents(tiny, inversions(InversionMethod.STYLEDIFFUSION), SOURCE, EditConfig(target=DOG),
                      [Taus(0.5, c, 0.6, 0.0) for c in (0.2, 0.5, 0.8)], texts, T)
    finally:
        hook.remove()
    assert rows == [4] * (2 * T)


class Latent:
    """Stands in for an inversion whose z_T has side ``side`` (sweep_chunks reads its size and shares_source)."""

    shares_source = True

    def __init__(self, side: int) -> None:
        self.z_T = torch.zeros(1, 4, side, side)


@pytest.mark.parametrize("side, size", [(64, SWEEP_TARGETS), (96, 3), (128, 2), (256, 1), (8, 512)])
def test_sweep_chunks_bound_the_batch_by_the_latent_area_and_keep_the_order(side, size):
    """8 targets per group at SD 1.x's 64 × 64 latent, fewer for larger latents (SD 2.1 at 768², SDXL), more for
    smaller ones; every combination once, in order."""
    combos = [Taus(v / 1000, 0.6, 0.6, 0.0) for v in range(600)]
    chunks = sweep_chunks(combos, Latent(side))
    assert len(chunks[0]) == size and sum(chunks, []) == combos


def test_prox_npi_samples_one_combination_at_a_time(tiny):
    """ProxEdit's threshold is a quantile over the whole batch: its source row depends on the targets."""
    prox = ProxNPIInversion(torch.zeros(1, 4, 8, 8), tiny.encode_null(), tiny.encode_text([SOURCE]).float())
    combos = [Taus(0.5, c, 0.6, 0.0) for c in (0.2, 0.5, 0.8)]
    assert not prox.shares_source
    assert sweep_chunks(combos, prox) == [[c] for c in combos]
    edit = EditConfig(target=DOG, tau_c=[0.2, 0.5])
    with pytest.raises(ValueError, match="one combination at a time"):
        sweep_latents(tiny, prox, SOURCE, edit, combos[:2], tiny.encode_text([SOURCE, DOG]).float(), T)


def test_the_cli_edit_job_samples_a_sweep_in_one_batch(tiny, trained, tmp_path):
    """``run_edit`` (stylediffusion.py, stylediffusion_csv.py) shares the source: 2 combinations, batch 3 at every
    UNet call; the per-combination files and sidecars as before."""
    rows: list[int] = []
    hook = tiny.unet.register_forward_pre_hook(lambda module, args: rows.append(int(args[0].shape[0])))
    edit = EditConfig(target="a tiger sitting on a rug", tau_v=[0.5, 0.8], outdir=str(tmp_path))
    try:
        written = run_edit(tiny, trained, edit, progress=False)
    finally:
        hook.remove()
    assert rows == [3] * (2 * trained.num_ddim_steps)
    assert [p.name for p in written] == [name for taus in edit.combinations()
                                         for name in (f"edited_img-{taus.stem()}.png", f"grid_img-{taus.stem()}.png")]
    assert all(p.with_suffix(".json").is_file() for p in written if p.name.startswith("edited_img-"))
