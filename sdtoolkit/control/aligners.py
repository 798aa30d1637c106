"""Token alignment between a source prompt and edited prompts (prompt-to-prompt's ``seq_aligner``).

Refinement edits align the token sequences with Needleman-Wunsch; replacement
edits pair the prompts word by word (``sdtoolkit.words.word_spans``). Sequences
are the full CLIP encodings: position 0 is BOS, then the words' tokens, then EOT;
positions after that are padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from sdtoolkit.core.words import WordSpan, word_spans

GAP = "-"
# Traceback codes of global_align.
LEFT, UP, DIAG, START = 1, 2, 3, 4


@dataclass(frozen=True)
class ScoreParams:
    """Needleman-Wunsch scores: per gap, per matching pair and per mismatching pair."""

    gap: int
    match: int
    mismatch: int

    def mis_match_char(self, x: object, y: object) -> int:
        """Return the score of aligning ``x`` with ``y``."""
        return self.match if x == y else self.mismatch


def global_align(x: Sequence[object], y: Sequence[object], score: ScoreParams) -> tuple[np.ndarray, np.ndarray]:
    """Align ``x`` and ``y`` globally (Needleman-Wunsch).

    Returns (score matrix, traceback matrix), both int32 of shape (len(x)+1, len(y)+1);
    traceback codes are 1 = left (gap in x), 2 = up (gap in y), 3 = diagonal, 4 = start.
    Ties prefer left, then up, then diagonal, as prompt-to-prompt does.
    """
    matrix = np.zeros((len(x) + 1, len(y) + 1), dtype=np.int32)
    matrix[0, 1:] = (np.arange(len(y)) + 1) * score.gap
    matrix[1:, 0] = (np.arange(len(x)) + 1) * score.gap
    trace_back = np.zeros((len(x) + 1, len(y) + 1), dtype=np.int32)
    trace_back[0, 1:] = LEFT
    trace_back[1:, 0] = UP
    trace_back[0, 0] = START
    for i in range(1, len(x) + 1):
        for j in range(1, len(y) + 1):
            left = matrix[i, j - 1] + score.gap
            up = matrix[i - 1, j] + score.gap
            diag = matrix[i - 1, j - 1] + score.mis_match_char(x[i - 1], y[j - 1])
            matrix[i, j] = max(left, up, diag)
            trace_back[i, j] = LEFT if matrix[i, j] == left else UP if matrix[i, j] == up else DIAG
    return matrix, trace_back


def get_aligned_sequences(
    x: Sequence[object], y: Sequence[object], trace_back: np.ndarray
) -> tuple[list[object], list[object], torch.Tensor]:
    """Follow ``trace_back`` from the end.

    Returns (aligned x, aligned y, mapper): the aligned sequences hold "-" at gaps;
    mapper is an int64 tensor of shape (len(y), 2) whose row j is (j, index in x of
    the element aligned with y[j], or -1 when y[j] faces a gap).
    """
    x_seq: list[object] = []
    y_seq: list[object] = []
    mapper_y_to_x: list[tuple[int, int]] = []
    i, j = len(x), len(y)
    while (i > 0 or j > 0) and trace_back[i, j] != START:
        if trace_back[i, j] == DIAG:
            i, j = i - 1, j - 1
            x_seq.append(x[i])
            y_seq.append(y[j])
            mapper_y_to_x.append((j, i))
        elif trace_back[i, j] == LEFT:
            j -= 1
            x_seq.append(GAP)
            y_seq.append(y[j])
            mapper_y_to_x.append((j, -1))
        else:
            i -= 1
            x_seq.append(x[i])
            y_seq.append(GAP)
    x_seq.reverse()
    y_seq.reverse()
    mapper_y_to_x.reverse()
    return x_seq, y_seq, torch.tensor(mapper_y_to_x, dtype=torch.int64).reshape(-1, 2)


def _encode(text: str, tokenizer: PreTrainedTokenizerBase, max_len: int) -> list[int]:
    """Return the token ids of ``text`` with BOS and EOT; raise ``ValueError`` when they exceed ``max_len``."""
    ids = list(tokenizer.encode(text))
    if len(ids) > max_len:
        raise ValueError(f"prompt {text!r} encodes to {len(ids)} tokens, more than max_len={max_len}; shorten it")
    return ids


def _padding_source(target_pos: int, len_x: int, len_y: int, max_len: int) -> int:
    """Return the source position read by target padding position ``target_pos`` (>= len_y).

    Target padding facing source tokens reads the source padding at the same offset
    after EOT (len_x + k); positions beyond both sequences read themselves.
    """
    if target_pos >= len_x:
        return target_pos
    return min(len_x + target_pos - len_y, max_len - 1)


def get_mapper(
    x: str, y: str, tokenizer: PreTrainedTokenizerBase, max_len: int = 77
) -> tuple[torch.Tensor, torch.Tensor]:
    """Align the tokens of target prompt ``y`` with those of source prompt ``x``.

    Returns (mapper, alphas), shapes (max_len,): target position j reads source
    position mapper[j] (int64; -1 where the target token was inserted), and
    alphas[j] (float) is 0 at inserted target tokens, else 1. Padding positions
    read source padding; positions beyond both sequences read themselves.
    """
    x_seq = _encode(x, tokenizer, max_len)
    y_seq = _encode(y, tokenizer, max_len)
    _, trace_back = global_align(x_seq, y_seq, ScoreParams(gap=0, match=1, mismatch=-1))
    mapper_base = get_aligned_sequences(x_seq, y_seq, trace_back)[-1][:, 1]
    mapper = torch.tensor(
        [_padding_source(j, len(x_seq), len(y_seq), max_len) for j in range(max_len)], dtype=torch.int64
    )
    mapper[: len(y_seq)] = mapper_base
    alphas = torch.ones(max_len)
    alphas[: len(y_seq)] = mapper_base.ne(-1).float()
    return mapper, alphas


def get_refinement_mapper(
    prompts: Sequence[str], tokenizer: PreTrainedTokenizerBase, max_len: int = 77
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (mappers, alphas) of every target prompt against ``prompts[0]``, shapes (len(prompts)-1, max_len).

    Row i is ``get_mapper(prompts[0], prompts[i + 1])``: mappers int64, alphas float.
    """
    if len(prompts) < 2:
        raise ValueError(f"prompts {list(prompts)!r}: need a source prompt and at least one target prompt")
    pairs = [get_mapper(prompts[0], target, tokenizer, max_len) for target in prompts[1:]]
    return torch.stack([mapper for mapper, _ in pairs]), torch.stack([alpha for _, alpha in pairs])


def _word_groups(span: WordSpan) -> tuple[list[int], list[int], list[int]]:
    """Return the (leading punctuation, core, trailing punctuation) token positions of a word."""
    core_start = span.all_tokens.index(span.tokens[0]) if span.tokens else 0
    core_end = core_start + len(span.tokens)
    return span.all_tokens[:core_start], span.tokens, span.all_tokens[core_end:]


def _map_group(mapper: np.ndarray, source: list[int], target: list[int]) -> None:
    """Map source token positions onto target ones: one-to-one when counts match, else each spreads 1/len(target)."""
    if not source or not target:
        return
    if len(source) == len(target):
        mapper[source, target] = 1.0
    else:
        mapper[np.ix_(source, target)] = 1.0 / len(target)


def _map_word(mapper: np.ndarray, source: WordSpan, target: WordSpan) -> None:
    """Map the tokens of a source word onto those of the target word in its place.

    Core maps to core and punctuation to punctuation; punctuation present on one
    side only joins the core.
    """
    (src_pre, src_core, src_suf), (tgt_pre, tgt_core, tgt_suf) = _word_groups(source), _word_groups(target)
    if bool(src_pre) != bool(tgt_pre):
        src_core, tgt_core, src_pre, tgt_pre = src_pre + src_core, tgt_pre + tgt_core, [], []
    if bool(src_suf) != bool(tgt_suf):
        src_core, tgt_core, src_suf, tgt_suf = src_core + src_suf, tgt_core + tgt_suf, [], []
    for src_group, tgt_group in ((src_pre, tgt_pre), (src_core, tgt_core), (src_suf, tgt_suf)):
        _map_group(mapper, src_group, tgt_group)


def get_replacement_mapper_(x: str, y: str, tokenizer: PreTrainedTokenizerBase, max_len: int = 77) -> torch.Tensor:
    """Return the word-by-word token mapper from source ``x`` to target ``y``, float (max_len, max_len).

    mapper[i, j] is the weight of source token i in target token j. Raises
    ``ValueError`` when the prompts have different numbers of words.
    """
    len_x, len_y = len(_encode(x, tokenizer, max_len)), len(_encode(y, tokenizer, max_len))
    spans_x, spans_y = word_spans(x, tokenizer), word_spans(y, tokenizer)
    if len(spans_x) != len(spans_y):
        raise ValueError(
            f"a Replace edit needs prompts with the same number of words, but {x!r} has {len(spans_x)} words "
            f"{[s.text for s in spans_x]} and {y!r} has {len(spans_y)} words {[s.text for s in spans_y]}; "
            "use --edit_type Refinement for edits that add or remove words"
        )
    mapper = np.zeros((max_len, max_len), dtype=np.float32)
    mapper[0, 0] = 1.0
    for source, target in zip(spans_x, spans_y):
        _map_word(mapper, source, target)
    mapper[len_x - 1, len_y - 1] = 1.0
    for j in range(len_y, max_len):
        mapper[_padding_source(j, len_x, len_y, max_len), j] = 1.0
    return torch.from_numpy(mapper)


def get_replacement_mapper(prompts: Sequence[str], tokenizer: PreTrainedTokenizerBase, max_len: int = 77) -> torch.Tensor:
    """Return the replacement mappers of every target prompt against ``prompts[0]``, float (len(prompts)-1, max_len, max_len).

    Entry [k, i, j] is the weight of source token i in token j of prompt k+1, for
    ``einsum('hpw,bwn->bhpn', attn_base, mapper)``. Equal words map token to token,
    a replaced word maps its tokens onto the new word's (spread evenly when the
    token counts differ), BOS maps to BOS and EOT to EOT; target padding facing
    source tokens reads source padding, later positions read themselves (so
    identical prompts give the identity).
    """
    if len(prompts) < 2:
        raise ValueError(f"prompts {list(prompts)!r}: need a source prompt and at least one target prompt")
    return torch.stack([get_replacement_mapper_(prompts[0], target, tokenizer, max_len) for target in prompts[1:]])
