"""The names error messages give the settings: the front door the user came through supplies them.

Every check formats its message with :func:`name`, given the setting's canonical name (the CLI flag's name without
its dashes: ``blend_word``, ``num_inner_steps``, ``inversion``; :data:`SETTINGS` lists them). By default (the CLIs)
``name("blend_word")`` is ``"--blend_word"``; a front door that names its inputs otherwise enters
:func:`front_door` with its mapping — the Python API its keywords (``sdtoolkit.api.API_NAMES``: ``blend_word`` →
``blend``), an app its controls' labels — so one message text serves every door::

    with front_door({"blend_word": "Blend words"}):
        model.edit(inv, "a tiger", blend=("horse", "tiger"))
    # UsageError: Blend words source word 'horse' is not in 'a cat'; its tokens are: [...]

A mapping may be partial: a setting it does not name keeps the name an enclosing front door gives it, else the
name an inner one gives it (the API's, when an app calls the API), else the CLI flag. The outermost door wins, as it
is the one the user touched. The names live in a :class:`contextvars.ContextVar`: each thread and each asyncio task
sees only its own front door (an app serving several users from worker threads), and leaving the ``with`` block
restores the previous names, also after an exception.

Code that only a CLI reaches (``sdtoolkit/cli/``, the CSV and PIE-Bench readers) writes its flags as they are; CSV
and PIE-Bench data errors name their columns.
"""
from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping
from types import MappingProxyType

SETTINGS: tuple[str, ...] = (
    # the image and prompts
    "image_path", "crop", "prompt", "target", "is_1word", "index",
    # the inversion
    "inversion", "num_ddim_steps", "guidance_scale", "num_inner_steps", "num_epoch", "schedule", "attn_pairing",
    "seed", "resolution", "keep_aspect",
    # the edit
    "edit_type", "tau_v", "tau_c", "tau_s", "tau_u", "blend_word", "eq_params", "blend_mask",
    # the model
    "model", "sd_version", "device", "dtype", "vae_tiling",
    # outputs (CLIs)
    "model_dir", "outdir", "replacement_rule",
)
"""Every setting a shared check names, by its canonical name: the CLI flag's name without its dashes."""

_NAMES: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar(
    "sdtoolkit_setting_names", default=MappingProxyType({}))


def _checked(names: Mapping[str, str]) -> dict[str, str]:
    unknown = sorted(set(names) - set(SETTINGS))
    if unknown:
        raise KeyError(f"{', '.join(unknown)}: not a setting; the settings are {', '.join(SETTINGS)}")
    return dict(names)


@contextlib.contextmanager
def front_door(names: Mapping[str, str]) -> Iterator[None]:
    """Within the block, :func:`name` gives each setting of ``names`` (canonical name → shown name) its shown name,
    unless an enclosing front door already names it. ``names`` may be partial; a key not in :data:`SETTINGS` is a
    KeyError (a mistyped mapping would otherwise fall back silently)."""
    token = _NAMES.set(MappingProxyType({**_checked(names), **_NAMES.get()}))
    try:
        yield
    finally:
        _NAMES.reset(token)


def name(setting: str) -> str:
    """The name of ``setting`` (a canonical name of :data:`SETTINGS`) at the current front door: its mapped name,
    else the CLI flag ``--{setting}``."""
    if setting not in SETTINGS:
        raise KeyError(f"{setting!r} is not a setting of sdtoolkit.core.naming.SETTINGS")
    return _NAMES.get().get(setting, f"--{setting}")


def names() -> dict[str, str]:
    """Every setting's name at the current front door (canonical name → shown name)."""
    return {setting: name(setting) for setting in SETTINGS}
