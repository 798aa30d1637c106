"""Words of a prompt and the CLIP token positions they occupy.

A robust replacement for prompt-to-prompt's ``ptp_utils.get_word_inds``: words are
split on any whitespace, matched case-insensitively and without their leading or
trailing punctuation ("Dog," matches "dog"), and multi-token words and repeated
words are handled. Token positions are 1-based: position 0 of the encoded
sequence is the BOS token.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Real

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from sdtoolkit.core.constants import DEFAULT_KEY

Bounds = float | tuple[float, float]
CrossReplaceSteps = Bounds | Mapping[str, Bounds]


@dataclass(frozen=True)
class WordSpan:
    """One whitespace word of a prompt and its token positions in the encoded prompt.

    ``text`` is the word as written, ``key`` its lowercased core (leading and trailing
    punctuation stripped), ``tokens`` the positions of the core's tokens and
    ``all_tokens`` the positions of all the word's tokens, punctuation included.
    """

    text: str
    key: str
    tokens: list[int]
    all_tokens: list[int]


def split_punctuation(word: str) -> tuple[str, str, str]:
    """Split ``word`` into (leading punctuation, core, trailing punctuation).

    Punctuation is any character that is not a letter or digit; a word made only
    of punctuation is all core.
    """
    start = 0
    while start < len(word) and not word[start].isalnum():
        start += 1
    if start == len(word):
        return "", word, ""
    end = len(word)
    while not word[end - 1].isalnum():
        end -= 1
    return word[:start], word[start:end], word[end:]


def word_key(word: str) -> str:
    """Return the matching key of ``word``: its core, lowercased."""
    return split_punctuation(word)[1].lower()


def _encode(text: str, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Return the token ids of ``text`` without BOS/EOS."""
    return list(tokenizer.encode(text, add_special_tokens=False))


def _word_span(word: str, start: int, tokenizer: PreTrainedTokenizerBase) -> WordSpan:
    """Return the span of one whitespace word whose first token sits at position ``start``."""
    prefix, core, suffix = split_punctuation(word)
    word_ids = _encode(word, tokenizer)
    all_tokens = list(range(start, start + len(word_ids)))
    prefix_ids, core_ids, suffix_ids = (_encode(piece, tokenizer) for piece in (prefix, core, suffix))
    if prefix_ids + core_ids + suffix_ids == word_ids:
        core_start = start + len(prefix_ids)
        tokens = list(range(core_start, core_start + len(core_ids)))
    else:
        # The pieces tokenise differently than the whole word (e.g. "'sup" -> "'s" "up"): keep the word whole.
        tokens = list(all_tokens)
    return WordSpan(text=word, key=core.lower(), tokens=tokens, all_tokens=all_tokens)


def word_spans(text: str, tokenizer: PreTrainedTokenizerBase) -> list[WordSpan]:
    """Return one ``WordSpan`` per whitespace word of ``text``, with 1-based token positions.

    Raises ``ValueError`` when the words' tokens, concatenated, differ from the
    tokens of the whole text (the word positions could not be trusted).
    """
    spans: list[WordSpan] = []
    position = 1
    for word in text.split():
        span = _word_span(word, position, tokenizer)
        spans.append(span)
        position += len(span.all_tokens)
    ids_by_word = [token for span in spans for token in _encode(span.text, tokenizer)]
    if ids_by_word != _encode(text, tokenizer):
        raise ValueError(
            f"cannot align the words of the prompt {text!r} with its tokens: "
            f"tokenising word by word gives {ids_by_word}, the whole prompt gives {_encode(text, tokenizer)}"
        )
    return spans


def prompt_tokens(text: str, tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Return the readable token strings of ``text``, BOS and EOS included (index = token position)."""
    return [tokenizer.decode([token_id]) for token_id in tokenizer.encode(text)]


def _match_tokens(spans: Sequence[WordSpan], query: str) -> list[int]:
    """Return the core token positions of every run of words whose keys equal the keys of ``query``."""
    query_keys = [word_key(word) for word in query.split()]
    if not query_keys:
        raise ValueError(f"word {query!r} is empty; give one or more words of the prompt")
    keys = [span.key for span in spans]
    size = len(query_keys)
    positions: set[int] = set()
    for start in range(len(spans) - size + 1):
        if keys[start : start + size] == query_keys:
            positions.update(token for span in spans[start : start + size] for token in span.tokens)
    return sorted(positions)


def get_word_inds(text: str, word_place: int | str, tokenizer: PreTrainedTokenizerBase) -> np.ndarray:
    """Return the 1-based token positions (int64 array) of a word of ``text``.

    ``word_place`` as a string selects every occurrence of that word (or run of
    words, e.g. "red ball"), matched case-insensitively without punctuation; as an
    int it selects the whitespace word at that 0-based position. Only the word's
    core tokens are returned (not its punctuation). Returns an empty array when
    the word is not there, as prompt-to-prompt does.
    """
    spans = word_spans(text, tokenizer)
    if isinstance(word_place, str):
        positions = _match_tokens(spans, word_place)
    elif isinstance(word_place, (int, np.integer)) and not isinstance(word_place, bool):
        positions = spans[word_place].tokens if 0 <= word_place < len(spans) else []
    else:
        raise ValueError(f"word_place {word_place!r} must be a word (str) or a word position (int)")
    return np.array(positions, dtype=np.int64)


def find_word_tokens(text: str, word: str, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Return the 1-based token positions of every occurrence of ``word`` in ``text``.

    Raises ``ValueError`` naming the word and listing the prompt's words when it is not there.
    """
    spans = word_spans(text, tokenizer)
    positions = _match_tokens(spans, word)
    if not positions:
        raise ValueError(
            f"word {word!r} is not in the prompt {text!r}; the prompt's words are: {[span.key for span in spans]}"
        )
    return positions


def _is_fraction(value: object) -> bool:
    """Tell whether ``value`` is a real number (not a bool)."""
    return isinstance(value, Real) and not isinstance(value, bool)


def _bounds(value: object, name: str) -> tuple[float, float]:
    """Return (start, end) fractions of ``value`` (a fraction f means (0, f)), validated to 0 <= start <= end <= 1."""
    if _is_fraction(value):
        start, end = 0.0, float(value)
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(_is_fraction(item) for item in value):
        start, end = float(value[0]), float(value[1])
    else:
        raise ValueError(
            f"cross_replace_steps for {name!r} is {value!r}; expected a fraction in [0, 1] or a (start, end) pair"
        )
    if not (0.0 <= start <= 1.0 and 0.0 <= end <= 1.0):
        raise ValueError(f"cross_replace_steps for {name!r} is {value!r}; fractions must lie in [0, 1]")
    if start > end:
        raise ValueError(f"cross_replace_steps for {name!r} is {value!r}; start must not exceed end")
    return start, end


def _rows(bounds: tuple[float, float], num_rows: int) -> slice:
    """Return the rows of the step axis that ``bounds`` switch on."""
    return slice(int(bounds[0] * num_rows), int(bounds[1] * num_rows))


def get_time_words_attention_alpha(
    prompts: Sequence[str],
    num_steps: int,
    cross_replace_steps: CrossReplaceSteps,
    tokenizer: PreTrainedTokenizerBase,
    max_num_words: int = 77,
) -> torch.Tensor:
    """Return prompt-to-prompt's cross-attention replacement schedule, shape (num_steps+1, len(prompts)-1, 1, 1, max_num_words).

    Entry [t, i, 0, 0, k] is 1 when the cross-attention of token k of target prompt
    i+1 is replaced at step t. ``cross_replace_steps`` is a fraction f (= (0, f)), a
    (start, end) pair of fractions, or a dict word -> fraction/pair with an optional
    "default_" entry for all other tokens (default (0., 1.)); bounds (b0, b1) switch
    on rows int(b0*(num_steps+1)) to int(b1*(num_steps+1)). Words missing from a
    target prompt are ignored there, as in prompt-to-prompt.
    """
    if len(prompts) < 2:
        raise ValueError(f"prompts {list(prompts)!r}: need a source prompt and at least one target prompt")
    if num_steps < 1:
        raise ValueError(f"num_steps {num_steps!r} must be a positive number of diffusion steps")
    if max_num_words < 1:
        raise ValueError(f"max_num_words {max_num_words!r} must be positive")
    steps = dict(cross_replace_steps) if isinstance(cross_replace_steps, Mapping) else {DEFAULT_KEY: cross_replace_steps}
    default = _bounds(steps.get(DEFAULT_KEY, (0.0, 1.0)), DEFAULT_KEY)
    word_bounds = {word: _bounds(value, word) for word, value in steps.items() if word != DEFAULT_KEY}
    num_rows = num_steps + 1
    alpha = torch.zeros(num_rows, len(prompts) - 1, max_num_words)
    alpha[_rows(default, num_rows)] = 1.0
    for word, bounds in word_bounds.items():
        for target, prompt in enumerate(prompts[1:]):
            positions = [p for p in get_word_inds(prompt, word, tokenizer).tolist() if p < max_num_words]
            if positions:
                alpha[:, target, positions] = 0.0
                alpha[_rows(bounds, num_rows), target, positions] = 1.0
    return alpha.reshape(num_rows, len(prompts) - 1, 1, 1, max_num_words)
