"""``--compile``: regional compilation of the UNet's repeated blocks traces our attention processors whole."""
from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounter

from sdtoolkit.core.attention import AttnCall, Branch, MapRecorder, map_layers, style_processors
from sdtoolkit.core.mapping import MappingNetworks
from sdtoolkit.core.models import REPEATED_BLOCKS, compile_repeated_blocks, load_models
from sdtoolkit.core.settings import EditConfig, Taus, TrainSettings
from sdtoolkit.jobs.edit import build_controller
from sdtoolkit.methods.inversions import StyleDiffusionInversion
from sdtoolkit.methods.sampler import sample
from sdtoolkit.methods.training import stylediffusion_loss


@pytest.fixture
def compiled():
    """A fresh tiny model whose repeated blocks are compiled with ``fullgraph=True`` (a graph break raises) and a
    counting backend (no code generation: cheap on the CPU)."""
    torch._dynamo.reset()
    models = load_models("tiny", device="cpu", dtype="fp32")
    counter = CompileCounter()
    n = compile_repeated_blocks(models.unet, backend=counter, fullgraph=True)
    yield models, counter, n
    torch._dynamo.reset()


def test_training_and_edit_steps_compile_with_zero_graph_breaks(compiled):
    models, counter, n = compiled
    assert n == sum(type(m).__name__ in REPEATED_BLOCKS for m in models.unet.modules()) > 0
    steps = 3
    schedule = models.schedule(steps)
    x = torch.rand(1, 3, models.image_size, models.image_size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    z0 = models.encode_latent(x)
    text = models.encode_text(["a photo of a cat"]).float()
    null = models.encode_null()
    features = models.image_features(x)
    mapping = MappingNetworks(steps, features.shape[1], models.max_length, features.shape[2], models.text_width)
    names = frozenset(l.name for l in map_layers(models.layers()))
    with style_processors(models.unet):
        with torch.no_grad():
            rec = MapRecorder(names)
            models.predict(z0, schedule.timesteps[0], text, AttnCall(0, Branch.COND, controller=rec))
            gt = {k: v.detach() for k, v in rec.maps.items()}
            eps_u = models.predict(z0, schedule.timesteps[0], null, AttnCall(0, Branch.UNCOND))
        for i in range(2):  # a training step: forward with the recorder and the value path, backward
            loss = stylediffusion_loss(models, schedule, mapping, i, z0, eps_u, z0, gt, text, features,
                                       TrainSettings(), names)
            loss.backward()
    assert mapping.nets[1].net[0].weight.grad is not None
    trained = counter.frame_count
    assert trained > 0
    # an edit: P2Plus with Replacement, reweighting, local blend and every tau active at some step
    edit = EditConfig(target="a photo of a dog", blend_word=(("cat",), ("dog",)), eq_params=(("dog",), (2.0,)))
    taus = Taus(0.5, 0.6, 0.6, 0.5)
    inv = StyleDiffusionInversion(z0, null, mapping, features)
    texts = torch.cat([text, models.encode_text(["a photo of a dog"]).float()])
    controller = build_controller(models, "a photo of a cat", edit, steps, taus)
    z = sample(models, schedule, inv, texts, lambda i: [True, taus.value_mapped(i, steps)], 7.5, controller)
    assert torch.isfinite(z).all()
    assert counter.frame_count > trained
