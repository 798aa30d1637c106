"""Token alignment for refinement and replacement edits (seq_aligner)."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPTokenizer

from sdtoolkit.core.tokenizer import load_clip_tokenizer
from sdtoolkit.control.aligners import (
    ScoreParams,
    get_aligned_sequences,
    get_mapper,
    get_refinement_mapper,
    get_replacement_mapper,
    global_align,
)


@pytest.fixture(scope="module")
def tokenizer() -> CLIPTokenizer:
    return load_clip_tokenizer()


def test_global_align_and_traceback() -> None:
    # Wikipedia's Needleman-Wunsch example: the best score is 0.
    x, y = list("GATTACA"), list("GCATGCU")
    matrix, trace_back = global_align(x, y, ScoreParams(gap=-1, match=1, mismatch=-1))
    assert matrix.shape == trace_back.shape == (8, 8)
    assert matrix[0].tolist() == [0, -1, -2, -3, -4, -5, -6, -7]
    assert matrix[-1, -1] == 0
    x_seq, y_seq, mapper = get_aligned_sequences(x, y, trace_back)
    assert len(x_seq) == len(y_seq)
    assert [c for c in x_seq if c != "-"] == x
    assert [c for c in y_seq if c != "-"] == y
    score = sum(-1 if "-" in (a, b) else (1 if a == b else -1) for a, b in zip(x_seq, y_seq))
    assert score == 0
    assert mapper.shape == (7, 2)
    assert mapper[:, 0].tolist() == list(range(7))
    # Rebuild y -> x from the aligned columns and compare.
    expected, i = [], 0
    for a, b in zip(x_seq, y_seq):
        if b != "-":
            expected.append(i if a != "-" else -1)
        i += a != "-"
    assert mapper[:, 1].tolist() == expected


def test_get_aligned_sequences_insertion() -> None:
    x, y = [0, 1, 2, 3], [0, 1, 9, 2, 3]
    _, trace_back = global_align(x, y, ScoreParams(0, 1, -1))
    x_seq, y_seq, mapper = get_aligned_sequences(x, y, trace_back)
    assert x_seq == [0, 1, "-", 2, 3]
    assert y_seq == y
    assert mapper.tolist() == [[0, 0], [1, 1], [2, -1], [3, 2], [4, 3]]


def test_refinement_mapper_insertion(tokenizer: CLIPTokenizer) -> None:
    # "a dog": BOS a dog EOT; "a sitting dog": BOS a sitting dog EOT.
    mappers, alphas = get_refinement_mapper(["a dog", "a sitting dog"], tokenizer)
    assert mappers.shape == alphas.shape == (1, 77)
    assert mappers.dtype == torch.int64 and alphas.dtype == torch.float32
    assert mappers[0, :5].tolist() == [0, 1, -1, 2, 3]
    assert alphas[0, :5].tolist() == [1, 1, 0, 1, 1]
    assert mappers[0, 5:].tolist() == list(range(5, 77))
    assert torch.all(alphas[0, 5:] == 1)


def test_refinement_mapper_deletion_reads_source_padding(tokenizer: CLIPTokenizer) -> None:
    # "a big red dog": BOS a big red dog EOT (6); "a dog": BOS a dog EOT (4).
    mapper, alphas = get_mapper("a big red dog", "a dog", tokenizer, max_len=10)
    assert mapper.tolist() == [0, 1, 4, 5, 6, 7, 6, 7, 8, 9]
    assert torch.all(alphas == 1)


def test_refinement_mapper_identical_prompts(tokenizer: CLIPTokenizer) -> None:
    mappers, alphas = get_refinement_mapper(["a cat", "a cat", "a cat"], tokenizer)
    assert mappers.shape == (2, 77)
    assert torch.equal(mappers, torch.arange(77).expand(2, 77))
    assert torch.all(alphas == 1)


def test_refinement_mapper_rejects_long_prompt(tokenizer: CLIPTokenizer) -> None:
    with pytest.raises(ValueError, match="max_len=77"):
        get_refinement_mapper(["a cat", " ".join(["cat"] * 80)], tokenizer)


def test_replacement_same_length(tokenizer: CLIPTokenizer) -> None:
    mapper = get_replacement_mapper(["a cat on a mat", "a dog on a mat"], tokenizer)
    assert mapper.shape == (1, 77, 77)
    assert mapper.dtype == torch.float32
    assert mapper[0, 2, 2] == 1
    assert torch.equal(mapper[0], torch.eye(77))


def test_replacement_identical_prompts_is_identity(tokenizer: CLIPTokenizer) -> None:
    mapper = get_replacement_mapper(["A dog, a (red) ball"] * 3, tokenizer)
    assert mapper.shape == (2, 77, 77)
    assert torch.equal(mapper, torch.eye(77).expand(2, 77, 77))


def test_replacement_multi_token_target(tokenizer: CLIPTokenizer) -> None:
    # source: BOS a(1) cat(2) on(3) a(4) mat(5) EOT(6)
    # target: BOS a(1) tor(2) toi(3) se(4) shell(5) on(6) a(7) mat(8) EOT(9)
    mapper = get_replacement_mapper(["a cat on a mat", "a tortoiseshell on a mat"], tokenizer)[0]
    expected = torch.zeros(77, 77)
    expected[0, 0] = expected[1, 1] = 1
    expected[2, 2:6] = 0.25
    expected[3, 6] = expected[4, 7] = expected[5, 8] = expected[6, 9] = 1
    for j in range(10, 77):
        expected[j, j] = 1
    assert torch.equal(mapper, expected)


def test_replacement_multi_token_source_keeps_later_offsets(tokenizer: CLIPTokenizer) -> None:
    # Source BOS a tor toi se shell(5) on(6) a(7) mat(8) EOT(9) -> target BOS a cat(2) on(3) a(4) mat(5) EOT(6).
    mapper = get_replacement_mapper(["a tortoiseshell on a mat", "a cat on a mat"], tokenizer)[0]
    assert mapper[2:6, 2].tolist() == [1, 1, 1, 1]
    assert (mapper[6, 3], mapper[7, 4], mapper[8, 5], mapper[9, 6]) == (1, 1, 1, 1)
    # Target padding 7..9 faces source tokens: it reads source padding 10..12; later positions read themselves.
    assert (mapper[10, 7], mapper[11, 8], mapper[12, 9]) == (1, 1, 1)
    assert all(mapper[j, j] == 1 for j in range(10, 77))
    assert torch.equal(mapper.sum(dim=0)[:2], torch.ones(2))
    assert mapper.sum(dim=0)[2] == 4
    assert torch.all(mapper.sum(dim=0)[3:] == 1)


def test_replacement_punctuation(tokenizer: CLIPTokenizer) -> None:
    # source: BOS a(1) dog(2) ,(3) a(4) cat(5) EOT(6); target: BOS a(1) cat(2) ,(3) a(4) dog(5) !(6) EOT(7)
    mapper = get_replacement_mapper(["a dog, a cat", "a cat, a dog!"], tokenizer)[0]
    assert mapper[2, 2] == 1 and mapper[3, 3] == 1
    # "cat" -> "dog!": the lone "!" joins the core, so the single source token spreads over two.
    assert mapper[5, 5] == 0.5 and mapper[5, 6] == 0.5
    assert mapper[6, 7] == 1
    assert mapper[7:, 8:].equal(torch.eye(70)[:, 1:])


def test_replacement_word_count_mismatch(tokenizer: CLIPTokenizer) -> None:
    with pytest.raises(ValueError, match=r"3 words.*2 words.*Refinement"):
        get_replacement_mapper(["a red dog", "a dog"], tokenizer)


def test_mappers_need_two_prompts(tokenizer: CLIPTokenizer) -> None:
    with pytest.raises(ValueError, match="target prompt"):
        get_replacement_mapper(["a dog"], tokenizer)
    with pytest.raises(ValueError, match="target prompt"):
        get_refinement_mapper(["a dog"], tokenizer)
