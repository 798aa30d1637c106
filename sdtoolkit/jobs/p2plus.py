"""P2Plus on *generated* images: the source is a DDIM sample from a seed's noise, the target is edited from it."""
from __future__ import annotations

import torch
from PIL import Image

from sdtoolkit.core.images import fit_size, tensor_to_pil
from sdtoolkit.core.models import SDModels
from sdtoolkit.core.settings import EditConfig, Taus
from sdtoolkit.jobs.edit import edit_latents
from sdtoolkit.methods.inversions import DDIMInversion


class Generator:
    """The prompts of one generated edit encoded once; :meth:`edit` samples [source, target] from a seed."""

    def __init__(self, models: SDModels, prompt: str, edit: EditConfig, num_steps: int, guidance_scale: float,
                 resolution: int | None = None) -> None:
        self.models, self.prompt, self.edit = models, prompt, edit
        self.num_steps, self.guidance_scale = num_steps, guidance_scale
        self.null = models.encode_null()
        self.texts = torch.cat([models.encode_text([prompt]), models.encode_text([edit.target])]).float()
        self.pooled = models.encode_pooled([prompt, edit.target])
        side = fit_size(1, 1, resolution or models.image_size, False, models.family.size_multiple)[0]
        latent = side // models.vae_scale_factor
        self.shape = (1, models.unet.config.in_channels, latent, latent)

    def noise(self, seed: int) -> torch.Tensor:
        """z_T (1, C, h, w) drawn on the CPU from ``seed`` (the same on every device)."""
        return torch.randn(self.shape, generator=torch.Generator().manual_seed(seed)).to(self.models.device)

    def edit_seed(self, seed: int, taus: Taus, controller=None) -> tuple[Image.Image, Image.Image]:
        """(source, edited) generated from ``seed`` with P2Plus at ``taus`` (tau_v unused: nothing is inverted)."""
        z = edit_latents(self.models, DDIMInversion(self.noise(seed), self.null), self.prompt, self.edit, taus,
                         self.texts, self.num_steps, self.guidance_scale, controller=controller, pooled=self.pooled)
        images = self.models.decode_latent(z)
        return tensor_to_pil(images[0]), tensor_to_pil(images[1])
