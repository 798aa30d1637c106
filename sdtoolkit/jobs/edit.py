"""Edit one inverted image with P2Plus for every tau combination; edited images, grids and sidecars on disk."""
from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Sequence

import torch

from sdtoolkit.control.controllers import AttentionStore, LocalBlend, MaskBlend, P2PController, SweepController, \
    blend_word_alphas, get_equalizer, show_cross_attention
from sdtoolkit.core.checks import validate_edit
from sdtoolkit.core.images import decodes, image_grid, load_mask, tensor_to_pil
from sdtoolkit.core.io import save_image, write_json
from sdtoolkit.core.mapping import sidecar_path
from sdtoolkit.core.models import SDModels
from sdtoolkit.core.progress import ProgressBar
from sdtoolkit.core.settings import EditConfig, EditType, InversionMethod, InvertConfig, Taus
from sdtoolkit.jobs.invert import SourceImage, existing_result, invert, load_inversion, load_source, versions
from sdtoolkit.methods.inversions import DDIMInversion, Inversion
from sdtoolkit.methods.sampler import sample


def edit_folder(cfg: InvertConfig, edit: EditConfig) -> Path:
    """``{outdir}/{index} {target}`` (the source prompt for StoreAttn), as the reference names it."""
    return edit.folder(cfg.index, cfg.prompt)


def expected_files(cfg: InvertConfig, edit: EditConfig) -> list[Path]:
    """The files an edit run writes (docs/method.md §6)."""
    folder = edit_folder(cfg, edit)
    if edit.edit_type is EditType.STORE_ATTN:
        return [folder / "grid_img.png", folder / "cross_attention.png"]
    out = []
    for taus in edit.combinations():
        out += [folder / f"edited_img-{taus.stem()}.png", folder / f"grid_img-{taus.stem()}.png"]
    return out


def sidecar_files(cfg: InvertConfig, edit: EditConfig) -> list[Path]:
    """The JSON sidecars an edit run writes beside its images."""
    folder = edit_folder(cfg, edit)
    if edit.edit_type is EditType.STORE_ATTN:
        return [folder / "run.json"]
    return [folder / f"edited_img-{taus.stem()}.json" for taus in edit.combinations()]


def _as_json(value) -> object:
    return json.loads(json.dumps(value, default=str))


def damaged_outputs(cfg: InvertConfig, edit: EditConfig, images: list[Path] = ()) -> str | None:
    """Why an edit must be (re)done: an image (its own, and ``images``) missing or not decoding, a sidecar that
    does not parse or records other settings; None when everything is there and sound."""
    for path in expected_files(cfg, edit) + list(images):
        if not path.is_file():
            return f"{path} is missing"
        if not decodes(path):
            return f"{path} does not decode (truncated or corrupted)"
    for path in sidecar_files(cfg, edit):
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            return f"{path} is missing or not JSON ({type(exc).__name__})"
        if not isinstance(saved, dict) or saved.get("edit") != _as_json(asdict(edit)) or \
                saved.get("source") != _as_json(asdict(cfg)):
            return f"{path} records other settings"
    return None


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
                         equalizer=equalizer, local_blend=blend, **taus.attention())


def edit_latents(models: SDModels, inv: Inversion, prompt: str, edit: EditConfig, taus: Taus, texts: torch.Tensor,
                 num_steps: int, guidance_scale: float = 7.5, controller: P2PController | None = None,
                 blend_mask: torch.Tensor | None = None, pooled: torch.Tensor | None = None) -> torch.Tensor:
    """Sample [source, target] with P2Plus for ``taus``; the target's value path uses the learned input for steps
    < tau_v·T, the source's always (docs/method.md §4). ``pooled``: SDXL's pooled embeddings of the two prompts.
    Returns latents (2, 4, h, w)."""
    if controller is None:
        controller = build_controller(models, prompt, edit, num_steps, taus, blend_mask)
    return sample(models, models.schedule(num_steps), inv, texts, lambda i: [True, taus.value_mapped(i, num_steps)],
                  guidance_scale, controller, pooled=pooled)


SWEEP_TARGETS = 8
"""Target rows sampled together in a sweep at a 64 × 64 latent (SD 1.x at 512²): one batch of 1 + 8 prompts, 18
UNet rows per step over the two guidance branches. A larger latent takes proportionally fewer (SD 2.1 at 768²: 3,
SDXL at 1024²: 2), a smaller one more; the bound keeps a sweep's activations and materialised attention
probabilities within ~4.5× those of one edit (docs/backbones.md, "Speed: sweeps share the source")."""
SWEEP_LATENT_AREA = 64 * 64


def sweep_chunks(combinations: Sequence[Taus], inv: Inversion, targets: int = SWEEP_TARGETS) -> list[list[Taus]]:
    """The combinations in the groups a sweep samples together, in order: ``targets`` per group at a 64 × 64 latent,
    scaled by the inverse of the latent's area (at least 1); one per group for a method whose source row depends on
    the target rows (:attr:`Inversion.shares_source` False: ProxEdit's batch-wide threshold)."""
    h, w = inv.z_T.shape[-2:]
    size = max(1, targets * SWEEP_LATENT_AREA // (h * w)) if inv.shares_source else 1
    combos = list(combinations)
    return [combos[k:k + size] for k in range(0, len(combos), size)]


def sweep_latents(models: SDModels, inv: Inversion, prompt: str, edit: EditConfig, combinations: Sequence[Taus],
                  texts: torch.Tensor, num_steps: int, guidance_scale: float = 7.5,
                  controllers: Sequence | None = None, blend_mask: torch.Tensor | None = None,
                  pooled: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`edit_latents` for K combinations at once, the source sampled once: one batch [source, target × K]
    (``texts`` and ``pooled`` are the pair's, (2, …)), each target row with its own combination's value path
    (learned input for steps < tau_v·T), controller and controller state (:class:`SweepController`; ``controllers``:
    one per combination, default :func:`build_controller`'s). Returns latents (1 + K, 4, h, w): row 0 the source,
    row k the target of ``combinations[k - 1]``; rows [0, k] equal that combination's own edit up to float noise of
    the batch size. Only for a method with :attr:`Inversion.shares_source` (else one combination per call)."""
    combos = list(combinations)
    if len(combos) > 1 and not inv.shares_source:
        raise ValueError(f"{inv.name.value}: its source row depends on the target rows; "
                         "sample one combination at a time")
    if controllers is None:
        controllers = [build_controller(models, prompt, edit, num_steps, taus, blend_mask) for taus in combos]
    k = len(combos)
    batch_texts = torch.cat([texts[:1], texts[1:2].expand(k, -1, -1)])  # (1 + K, L, D)
    batch_pooled = None if pooled is None else torch.cat([pooled[:1], pooled[1:2].expand(k, -1)])  # (1 + K, P)
    return sample(models, models.schedule(num_steps), inv, batch_texts,
                  lambda i: [True] + [taus.value_mapped(i, num_steps) for taus in combos], guidance_scale,
                  SweepController(controllers), pooled=batch_pooled)


BASELINE_COLUMNS = ("DDIM inversion, source prompt", "DDIM with word swap (target prompt, no P2P)",
                    "DDIM inversion + P2P", "null-text + P2P")


def nulltext_for_baselines(models: SDModels, cfg: InvertConfig, source: SourceImage, src_text: torch.Tensor,
                           null: torch.Tensor, progress: bool = True) -> tuple[Inversion, dict]:
    """The null-text inversion of this image (its default 10 inner steps, the same T), loaded when saved, else
    trained and saved now. Returns it and a note for the sidecar (file, trained now or loaded)."""
    method = InversionMethod.NULLTEXT
    nt_cfg = cfg if cfg.inversion is method else replace(cfg, inversion=method, num_inner_steps=method.default_inner_steps)
    trained = False
    if not existing_result(nt_cfg, source.sha256, False, models.run_identity(nt_cfg.num_ddim_steps)):
        invert(models, nt_cfg, progress=progress)
        trained = True
        print(f"--baselines: trained null-text inversion {nt_cfg.path()}")
    inv, _ = load_inversion(models, nt_cfg, source, src_text, null)
    return inv, {"nulltext_file": str(nt_cfg.path()), "nulltext_trained_now": trained}


def baseline_rows(models: SDModels, cfg: InvertConfig, edit: EditConfig, combinations: Sequence[Taus],
                  texts: torch.Tensor, ddim: Inversion, nulltext: Inversion, swap: torch.Tensor,
                  blend_mask: torch.Tensor | None, pooled: torch.Tensor | None = None) -> list[list]:
    """The comparison images of :data:`BASELINE_COLUMNS` for each of ``combinations`` (one sweep per baseline;
    ``swap``: the decoded DDIM samples of [source, target] without a controller, shared by every combination; the
    same blending as the edit)."""
    ddim_p2p = sweep_latents(models, ddim, cfg.prompt, edit, combinations, texts, cfg.num_ddim_steps,
                             cfg.guidance_scale, blend_mask=blend_mask, pooled=pooled)
    nt_p2p = sweep_latents(models, nulltext, cfg.prompt, edit, combinations, texts, cfg.num_ddim_steps,
                           cfg.guidance_scale, blend_mask=blend_mask, pooled=pooled)
    edited = models.decode_latent(torch.cat([ddim_p2p[1:], nt_p2p[1:]]))  # (2K, 3, H, W): DDIM's K, then null-text's
    k = len(combinations)
    swapped = [tensor_to_pil(swap[0]), tensor_to_pil(swap[1])]
    return [swapped + [tensor_to_pil(edited[j]), tensor_to_pil(edited[k + j])] for j in range(k)]


def run_edit(models: SDModels, cfg: InvertConfig, edit: EditConfig, progress: bool = True) -> list[Path]:
    """Edit one trained image for every tau combination; write edited images, grids and sidecars."""
    validate_edit(cfg.prompt, edit, models.tokenizer, cfg.is_1word)
    source = load_source(models, cfg.image_path, cfg.crop, cfg.resolution, cfg.keep_aspect)
    null = models.encode_null()
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
                   progress=progress, desc="reconstruction", pooled=models.encode_pooled([cfg.prompt]))
        rec = tensor_to_pil(models.decode_latent(z))
        written.append(save_image(folder / "grid_img.png", image_grid([source.pil, vae_rec, rec])))
        written.append(save_image(folder / "cross_attention.png", show_cross_attention(store, cfg.prompt, models.tokenizer)))
        write_json(folder / "run.json", {**base, "files": [str(p) for p in written]})
        return written
    texts = torch.cat([src_text, models.encode_text([edit.target]).float()])
    mask = load_mask(edit.blend_mask, cfg.resolution or models.image_size, *cfg.crop, keep_aspect=cfg.keep_aspect,
                     multiple=models.family.size_multiple) if edit.blend_mask else None
    pooled = models.encode_pooled([cfg.prompt, edit.target])
    if edit.baselines:
        ddim = DDIMInversion(inv.z_T, null)  # every method starts from the same DDIM inversion z_T
        nulltext, note = nulltext_for_baselines(models, cfg, source, src_text, null, progress)
        swap = models.decode_latent(sample(models, models.schedule(cfg.num_ddim_steps), ddim, texts,
                                           guidance_scale=cfg.guidance_scale, pooled=pooled))
        base["baselines"] = {"second_row": list(BASELINE_COLUMNS), **note}
    bar = ProgressBar(total=len(edit.combinations()), desc="tau combinations", disable=not progress)
    for chunk in sweep_chunks(edit.combinations(), inv):  # the source sampled once per chunk
        start = time.perf_counter()
        z = sweep_latents(models, inv, cfg.prompt, edit, chunk, texts, cfg.num_ddim_steps, cfg.guidance_scale,
                          blend_mask=mask, pooled=pooled)
        images = models.decode_latent(z)  # (1 + K, 3, H, W)
        rec = tensor_to_pil(images[0])
        extra = baseline_rows(models, cfg, edit, chunk, texts, ddim, nulltext, swap, mask, pooled) \
            if edit.baselines else [[] for _ in chunk]
        shared = (time.perf_counter() - start) / len(chunk)  # each combination's share of the chunk's sampling
        for k, taus in enumerate(chunk, start=1):
            start = time.perf_counter()
            edited = tensor_to_pil(images[k])
            row = [source.pil, vae_rec, rec, edited] + extra[k - 1]
            written.append(save_image(folder / f"edited_img-{taus.stem()}.png", edited))
            written.append(save_image(folder / f"grid_img-{taus.stem()}.png", image_grid(row, columns=4)))
            write_json(folder / f"edited_img-{taus.stem()}.json", {
                **base, "tau": taus.as_dict(),
                "seconds": round(shared + time.perf_counter() - start, 3), "files": [str(p) for p in written[-2:]],
            })
        bar.update(len(chunk))
    bar.close()
    return written
