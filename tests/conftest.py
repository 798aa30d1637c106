"""Shared fixtures: tiny random models built once, saved/reloaded through the real loading code.

The suite runs in two pytest-xdist workers, whole files per worker (pytest.ini); each worker and every CLI it
starts uses one torch thread, so two workers share two cores without oversubscription."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")  # e.g. "gw0"; None in a single-process run
if XDIST_WORKER:
    os.environ["OMP_NUM_THREADS"] = "1"

import pytest
import torch
from filelock import FileLock

if XDIST_WORKER:
    torch.set_num_threads(1)

from sdtoolkit.core.settings import InvertConfig
from sdtoolkit.jobs.invert import invert
from sdtoolkit.core.models import SDModels, load_models, save_pipeline_folder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAT = os.path.join(REPO, "example_images", "cat.jpg")


@pytest.fixture(scope="session")
def tiny() -> SDModels:
    """The in-process tiny model (random weights, CPU, fp32)."""
    return load_models("tiny", device="cpu", dtype="fp32")


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory, tiny) -> str:
    """The tiny model written as a diffusers SD folder (with image_encoder/)."""
    path = tmp_path_factory.mktemp("tiny_pipeline") / "tiny-sd"
    save_pipeline_folder(tiny, path)
    return str(path)


@pytest.fixture(scope="session")
def trained(tmp_path_factory, tiny) -> InvertConfig:
    """StyleDiffusion trained on the cat photo with the tiny model (10 inner steps, T = 30), once for all workers:
    the first worker to need it trains it into the run's shared temp folder under a lock, the others reuse it."""
    shared = tmp_path_factory.getbasetemp()
    if XDIST_WORKER:
        shared = shared.parent
    cfg = InvertConfig(prompt="a cat sitting on a rug", image_path=CAT, index=7, model="tiny", num_inner_steps=10,
                       model_dir=str(shared / "trained"))
    with FileLock(str(shared / "trained.lock")):
        if not cfg.path().is_file():
            torch.manual_seed(0)
            invert(tiny, cfg, progress=False)
    return cfg
