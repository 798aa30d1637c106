"""Edit one inverted image with P2Plus for every tau combination; edited images, grids and sidecars on disk."""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from sdtoolkit.control.controllers import AttentionStore, LocalBlend, MaskBlend, P2PController, blend_word_alphas, \
    get_equalizer, show_cross_attention
from sdtoolkit.core.checks import validate_edit
from sdtoolkit.core.images import image_grid, load_mask, tensor_to_pil
from sdtoolkit.core.io import save_image, write_json
from sdtoolkit.core.mapping import sidecar_path
from sdtoolkit.core.models import SDModels
from sdtoolkit.core.settings import EditConfig, EditType, InvertConfig, Taus
from sdtoolkit.jobs.invert import load_inversion, load_source, versions
from sdtoolkit.methods.inversions import Inversion
from sdtoolkit.methods.sampler import sample


def edit_folder(cfg: InvertConfig, edit: EditConfig) -> Path:
    """``{outdir}/{index} {target}`` (the source prompt for StoreAttn), as the reference names it."""
    text = cfg.prompt if edit.edit_type is EditType.STORE_ATTN else edit.target
    return Path(edit.outdir) / f"{cfg.index} {text}".replace("/", "_")


def expected_files(cfg: InvertConfig, edit: EditConfig) -> list[Path]:
    """The files an edit run writes (docs/method.md §6)."""
    folder = edit_folder(cfg, edit)
    if edit.edit_type is EditType.STORE_ATTN:
        return [folder / "grid_img.png", folder / "cross_attention.png"]
    out = []
    for taus in edit.combinations():
        out += [folder / f"edited_img-{taus.stem()}.png", folder / f"grid_img-{taus.stem()}.png"]
    return out


def build_controller(models: SDModels, prompt: str, edit: EditConfig, num_steps: int, taus: Taus,
                     blend_mask: torch.Tensor | None = None) -> P2PController:
    """The P2Plus controller for [prompt, edit.target] with one tau combination (tau_v is the sampler's).

    ``blend_mask`` ((H, W), 1 = may change): a user mask that replaces the blend words' attention mask
    (:class:`MaskBlend`, applied from the same step as LocalBlend).
    """
    prompts = [prompt, edit.target]
    tok = models.tokenizer
    equalizer = get_equalizer(edit.target, *edit.eq_params, tok) if edit.eq_params else None
    blend = None
    if blend_mask is not None:
        blend = MaskBlend.from_mask(blend_mask, start_step=int(0.2 * num_steps), batch=len(prompts))
    elif edit.blend_word:
        alphas = blend_word_alphas(prompts, edit.blend_word, tok)
        blend = LocalBlend(alphas, start_step=int(0.2 * num_steps))
    return P2PController(prompts, tok, num_steps, models.layers(), models.latent_size, edit.edit_type,
                         tau_c=taus.c, tau_s=taus.s, tau_u=taus.u, equalizer=equalizer, local_blend=blend)


def edit_latents(models: SDModels, inv: Inversion, prompt: str, edit: EditConfig, taus: Taus, texts: torch.Tensor,
                 num_steps: int, guidance_scale: float = 7.5, controller: P2PController | None = None,
                 blend_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Sample [source, target] with P2Plus for ``taus``; the target's value path uses the learned input for steps
    < tau_v·T, the source's always (docs/method.md §4). Returns latents (2, 4, h, w)."""
    if controller is None:
        controller = build_controller(models, prompt, edit, num_steps, taus, blend_mask)
    n_v = int(taus.v * num_steps)
    return sample(models, models.schedule(num_steps), inv, texts, lambda i: [True, i < n_v], guidance_scale, controller)


def run_edit(models: SDModels, cfg: InvertConfig, edit: EditConfig, progress: bool = True) -> list[Path]:
    """Edit one trained image for every tau combination; write edited images, grids and sidecars."""
    validate_edit(cfg.prompt, edit, models.tokenizer, cfg.is_1word)
    source = load_source(models, cfg.image_path, cfg.crop)
    null = models.encode_text([""]).float()
    src_text = models.encode_text([cfg.prompt]).float()
    inv, train_sidecar = load_inversion(models, cfg, source, src_text, null)
    folder = edit_folder(cfg, edit)
    vae_rec = tensor_to_pil(models.decode_latent(source.z0))
    written: list[Path] = []
    base = {"source": asdict(cfg), "edit": asdict(edit), "learned_file": str(cfg.path()),
            "learned_sidecar": str(sidecar_path(cfg.path())), "versions": versions()}
    if edit.edit_type is EditType.STORE_ATTN:
        store = AttentionStore(models.layers())
        z = sample(models, models.schedule(cfg.num_ddim_steps), inv, src_text, None, cfg.guidance_scale, store,
                   progress=progress, desc="reconstruction")
        rec = tensor_to_pil(models.decode_latent(z))
        written.append(save_image(folder / "grid_img.png", image_grid([source.pil, vae_rec, rec])))
        written.append(save_image(folder / "cross_attention.png", show_cross_attention(store, cfg.prompt, models.tokenizer)))
        write_json(folder / "run.json", {**base, "files": [str(p) for p in written]})
        return written
    texts = torch.cat([src_text, models.encode_text([edit.target]).float()])
    mask = load_mask(edit.blend_mask, models.image_size, *cfg.crop) if edit.blend_mask else None
    for taus in tqdm(edit.combinations(), desc="tau combinations", disable=not progress):
        start = time.perf_counter()
        z = edit_latents(models, inv, cfg.prompt, edit, taus, texts, cfg.num_ddim_steps, cfg.guidance_scale,
                         blend_mask=mask)
        images = models.decode_latent(z)
        rec, edited = tensor_to_pil(images[0]), tensor_to_pil(images[1])
        written.append(save_image(folder / f"edited_img-{taus.stem()}.png", edited))
        written.append(save_image(folder / f"grid_img-{taus.stem()}.png", image_grid([source.pil, vae_rec, rec, edited])))
        write_json(folder / f"edited_img-{taus.stem()}.json", {
            **base, "tau": taus.as_dict(),
            "seconds": round(time.perf_counter() - start, 3), "files": [str(p) for p in written[-2:]],
        })
    return written
