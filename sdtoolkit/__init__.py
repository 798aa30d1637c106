"""StyleDiffusion toolkit: prompt-embedding inversion and P2Plus editing on current diffusers.

The Python API (:mod:`sdtoolkit.api`) is importable from here: ``sdtoolkit.load("toy")``, ``Model.invert``,
``Model.edit``, ``Model.sweep``, ``Model.edit_generated``, ``sdtoolkit.ns_lpips``, ``sdtoolkit.pie_scores``, and
``sdtoolkit.front_door`` / ``sdtoolkit.API_NAMES`` (the names its errors give the settings). It is
imported on first use, so ``import sdtoolkit.core…`` (the CLIs' flag checks) stays light.
"""

__all__ = ["API_NAMES", "BarState", "Edited", "Inverted", "METHODS", "Model", "P2PLUS_TAUS", "RECOMMENDED_TAUS",
           "SCHEDULES", "UsageError", "front_door", "image_grid", "load", "ns_lpips", "pie_scores"]


def __getattr__(name: str):
    if name in __all__:
        from sdtoolkit import api

        return getattr(api, name)
    raise AttributeError(f"module 'sdtoolkit' has no attribute {name!r}")
