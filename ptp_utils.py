"""Prompt-to-prompt's public names (``ptp_utils``), re-exported from :mod:`sdtoolkit.control.controllers`."""
from sdtoolkit.control.controllers import (  # noqa: F401
    AttentionStore,
    LocalBlend,
    P2PController,
    blend_word_alphas,
    get_equalizer,
    show_cross_attention,
    text_under_image,
)
from sdtoolkit.core.words import get_time_words_attention_alpha, get_word_inds  # noqa: F401
