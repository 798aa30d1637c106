"""Import mapping networks trained by the reference scripts (a ``.pth`` file) as this toolkit's safetensors + sidecar.

The reference saves ``torch.save`` of a Python list, one entry per sampling step, of
``nn.ModuleDict({'conv_start': Conv1d, 'conv_block': Sequential(Sequential(Conv1d, BatchNorm1d, LeakyReLU)),
'conv_end': Conv1d})`` (docs/method.md §3, §6). It is read with ``torch.load(weights_only=True)`` and an allow-list of
exactly those ``torch.nn`` classes, so nothing else can be constructed; only the tensors are kept, moved into
:class:`sdtoolkit.core.mapping.MappingNetworks`. BatchNorm running statistics are dropped: the reference keeps its
networks in training mode, so they never take part in its results.
"""
from __future__ import annotations

import re
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from sdtoolkit.core.checks import check_image, check_prompt
from sdtoolkit.core.errors import UsageError
from sdtoolkit.core.images import sha256_file
from sdtoolkit.core.io import result_lock
from sdtoolkit.core.mapping import MappingNetworks
from sdtoolkit.core.models import SDModels
from sdtoolkit.core.settings import InversionMethod, InvertConfig
from sdtoolkit.jobs.invert import InvertResult, existing_result, load_source, save_inversion
from sdtoolkit.methods.inversions import StyleDiffusionInversion, ddim_inversion

ALLOWED = (nn.ModuleDict, nn.Sequential, nn.Conv1d, nn.BatchNorm1d, nn.LeakyReLU)
# reference parameter name -> this toolkit's StepMapper name (nets.{i}.net.*)
RENAME = {"conv_start": "net.0", "conv_block.0.0": "net.1", "conv_block.0.1": "net.2", "conv_end": "net.4"}


def load_reference_pth(path: str | Path) -> list[nn.ModuleDict]:
    """The reference's list of per-step ModuleDicts, unpickled with only :data:`ALLOWED` constructible;
    a UsageError naming the file for anything else."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    try:
        with torch.serialization.safe_globals(list(ALLOWED)), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. torch's pickle-protocol notice: the refusal below says it all
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # an untrusted file: any failure to unpickle is a refusal
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        reason = f"it needs {found.group(1)}, which is not allowed" if found else \
            f"it does not unpickle ({type(err).__name__})"
        raise UsageError(f"{path} is not a reference mapping-network file: {reason} (only torch.nn "
                         f"{', '.join(c.__name__ for c in ALLOWED)} are loaded)") from None
    if not isinstance(obj, list) or not obj or not all(type(m) is nn.ModuleDict for m in obj):
        raise UsageError(f"{path} is not a reference mapping-network file: it holds {type(obj).__name__}, "
                         "not a list of nn.ModuleDict (one per sampling step)")
    return obj


def _check_step(path: Path, i: int, step: nn.ModuleDict, tokens: int, width: int) -> None:
    """Refuse step ``i`` unless it is exactly the reference's layout for ``tokens`` image tokens and width 2L."""
    bad = f"{path} step {i} is not the reference's mapping network"
    if list(step.keys()) != ["conv_start", "conv_block", "conv_end"]:
        raise UsageError(f"{bad}: modules {list(step.keys())}, want ['conv_start', 'conv_block', 'conv_end']")
    block = step["conv_block"]
    layers = [type(m) for m in block[0]] if len(block) == 1 and type(block[0]) is nn.Sequential else []
    if type(block) is not nn.Sequential or layers != [nn.Conv1d, nn.BatchNorm1d, nn.LeakyReLU]:
        raise UsageError(f"{bad}: conv_block must be Sequential(Sequential(Conv1d, BatchNorm1d, LeakyReLU))")
    bn, act = block[0][1], block[0][2]
    if not bn.affine or bn.eps != 1e-5 or act.negative_slope != 0.01:
        raise UsageError(f"{bad}: BatchNorm1d(affine, eps 1e-5) and LeakyReLU(0.01) expected")
    want = {"conv_start.weight": (width, tokens, 1), "conv_start.bias": (width,),
            "conv_block.0.0.weight": (width, width, 1), "conv_block.0.0.bias": (width,),
            "conv_block.0.1.weight": (width,), "conv_block.0.1.bias": (width,),
            "conv_end.weight": (width, width, 1), "conv_end.bias": (width,)}
    for conv in (step["conv_start"], block[0][0], step["conv_end"]):
        if type(conv) is not nn.Conv1d or conv.kernel_size != (1,) or conv.stride != (1,) or conv.padding != (0,) \
                or conv.dilation != (1,) or conv.groups != 1:
            raise UsageError(f"{bad}: every Conv1d must have kernel_size 1, stride 1, no padding")
    params = dict(step.named_parameters())
    got = {k: tuple(v.shape) for k, v in params.items()}
    if got != want:
        diff = "; ".join(f"{k}: {got.get(k)} vs {v}" for k, v in want.items() if got.get(k) != v)
        raise UsageError(f"{bad} for this model ({tokens} image tokens, {width // 2} text tokens): {diff or got}")


def read_reference(path: str | Path, num_steps: int) -> list[nn.ModuleDict]:
    """The reference file's per-step modules, refused unless it holds exactly ``num_steps`` of them, all finite."""
    steps = load_reference_pth(path)
    if len(steps) != num_steps:
        raise UsageError(f"{path} holds {len(steps)} steps but --num_ddim_steps is {num_steps}; "
                         f"convert with --num_ddim_steps {len(steps)}")
    for i, step in enumerate(steps):
        for name, tensor in step.named_parameters():
            if not torch.isfinite(tensor).all():
                raise UsageError(f"{path} step {i}: {name} holds NaN or inf values; the networks cannot be used")
    return steps


def reference_mapping(path: str | Path, steps: list[nn.ModuleDict], tokens: int, max_length: int) -> MappingNetworks:
    """The reference's per-step modules (read from ``path``) as :class:`MappingNetworks`, layout and shapes checked."""
    state = {}
    for i, step in enumerate(steps):
        _check_step(Path(path), i, step, tokens, 2 * max_length)
        for name, tensor in step.named_parameters():
            module, _, kind = name.rpartition(".")
            state[f"nets.{i}.{RENAME[module]}.{kind}"] = tensor.detach().float()
    mapping = MappingNetworks(len(steps), tokens, max_length)
    mapping.load_state_dict(state, strict=True)
    return mapping.requires_grad_(False).eval()


def convert_reference(models: SDModels, cfg: InvertConfig, pth: str | Path, steps: list[nn.ModuleDict] | None = None,
                      overwrite: bool = False, progress: bool = True) -> InvertResult:
    """Save the reference's networks in ``pth`` at ``cfg.path()`` (StyleDiffusion), with the sidecar of a trained
    result: z_T from the DDIM inversion of the image (as the reference's editing computes it), the image features,
    and the reconstruction figures. ``steps``: the file already read by :func:`read_reference`. Everything is
    checked before anything is written."""
    if cfg.inversion is not InversionMethod.STYLEDIFFUSION:
        raise UsageError("reference .pth files hold StyleDiffusion mapping networks (--inversion stylediffusion)")
    check_prompt(cfg.prompt, models.tokenizer, cfg.is_1word)
    check_image(cfg.image_path, cfg.crop)
    steps = read_reference(pth, cfg.num_ddim_steps) if steps is None else steps
    start = time.perf_counter()
    source = load_source(models, cfg.image_path, cfg.crop)
    features = models.image_features(source.x).float()
    mapping = reference_mapping(pth, steps, features.shape[1], models.max_length).to(models.device)
    with result_lock(cfg.path()):  # one writer per result; the file's layout was checked above, before any write
        if existing_result(cfg, source.sha256, overwrite, models.run_identity(cfg.num_ddim_steps)):
            return InvertResult(cfg.path(), trained=False)
        schedule = models.schedule(cfg.num_ddim_steps)
        text = models.encode_text([cfg.prompt]).float()
        null = models.encode_text([""]).float()
        trace = ddim_inversion(models, source.z0, text, schedule, progress=progress)
        inv = StyleDiffusionInversion(trace.latents[-1], null, mapping, features)
        extra = {"converted_from": {"file": str(pth), "sha256": sha256_file(pth),
                                    "dropped": "BatchNorm running statistics (unused: the reference runs in training "
                                               "mode)"}}
        return save_inversion(models, cfg, source, inv, None, time.perf_counter() - start, extra)
