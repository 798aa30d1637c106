"""Prompt-to-prompt's public names (``seq_aligner``), re-exported from :mod:`sdtoolkit.control.aligners`."""
from sdtoolkit.control.aligners import (  # noqa: F401
    ScoreParams,
    get_aligned_sequences,
    get_mapper,
    get_refinement_mapper,
    get_replacement_mapper,
    get_replacement_mapper_,
    global_align,
)
