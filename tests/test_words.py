"""Words and their token positions (sdtoolkit.words)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import CLIPTokenizer

from sdtoolkit.core.tokenizer import load_clip_tokenizer
from sdtoolkit.core.words import (
    WordSpan,
    find_word_tokens,
    get_time_words_attention_alpha,
    get_word_inds,
    prompt_tokens,
    split_punctuation,
    word_key,
    word_spans,
)


@pytest.fixture(scope="module")
def tokenizer() -> CLIPTokenizer:
    return load_clip_tokenizer()


def inds(text: str, word: int | str, tokenizer: CLIPTokenizer) -> list[int]:
    return get_word_inds(text, word, tokenizer).tolist()


def test_split_punctuation_and_key() -> None:
    assert split_punctuation("(dog),") == ("(", "dog", "),")
    assert split_punctuation("it's") == ("", "it's", "")
    assert split_punctuation("&") == ("", "&", "")
    assert word_key('"Dog!"') == "dog"


def test_word_spans_with_punctuation(tokenizer: CLIPTokenizer) -> None:
    assert word_spans("a dog, a cat", tokenizer) == [
        WordSpan("a", "a", [1], [1]),
        WordSpan("dog,", "dog", [2], [2, 3]),
        WordSpan("a", "a", [4], [4]),
        WordSpan("cat", "cat", [5], [5]),
    ]


def test_word_spans_leading_punctuation_and_whitespace(tokenizer: CLIPTokenizer) -> None:
    spans = word_spans("a  (red)\tball", tokenizer)
    assert [(s.text, s.key, s.tokens, s.all_tokens) for s in spans] == [
        ("a", "a", [1], [1]),
        ("(red)", "red", [3], [2, 3, 4]),
        ("ball", "ball", [5], [5]),
    ]


def test_word_spans_keep_a_word_whole_when_pieces_tokenise_differently(tokenizer: CLIPTokenizer) -> None:
    # "'sup" encodes as "'s" "up": the pieces "'" + "sup" would not, so the word stays whole.
    (span,) = word_spans("'sup", tokenizer)
    assert (span.key, span.tokens, span.all_tokens) == ("sup", [1, 2], [1, 2])


def test_word_spans_of_empty_text(tokenizer: CLIPTokenizer) -> None:
    assert word_spans("   ", tokenizer) == []


def test_word_spans_raise_when_words_do_not_add_up(tokenizer: CLIPTokenizer) -> None:
    # Python splits on the separator \x1c, CLIP keeps it as a token of its own.
    with pytest.raises(ValueError, match=r"'a\\x1cdog'"):
        word_spans("a\x1cdog", tokenizer)


def test_prompt_tokens(tokenizer: CLIPTokenizer) -> None:
    assert prompt_tokens("A dog, a cat", tokenizer) == [
        "<|startoftext|>", "a", "dog", ",", "a", "cat", "<|endoftext|>",
    ]


def test_word_with_trailing_comma(tokenizer: CLIPTokenizer) -> None:
    result = get_word_inds("a dog, a cat", "dog", tokenizer)
    assert result.dtype == np.int64
    assert result.tolist() == [2]
    assert inds("a dog, a cat", "cat", tokenizer) == [5]


def test_case_insensitive(tokenizer: CLIPTokenizer) -> None:
    assert inds("A Dog sat", "dog", tokenizer) == [2]
    assert inds("a dog sat", "DOG", tokenizer) == [2]
    assert inds("a dog sat", "dog!", tokenizer) == [2]


def test_multi_token_word(tokenizer: CLIPTokenizer) -> None:
    assert len(tokenizer.encode("tortoiseshell", add_special_tokens=False)) == 4
    assert inds("a photo of a tortoiseshell cat", "tortoiseshell", tokenizer) == [5, 6, 7, 8]
    assert inds("a photo of a tortoiseshell cat", "cat", tokenizer) == [9]
    assert inds("a photo of a tortoiseshell cat", 4, tokenizer) == [5, 6, 7, 8]


def test_repeated_words(tokenizer: CLIPTokenizer) -> None:
    assert inds("a dog and a dog", "dog", tokenizer) == [2, 5]
    assert inds("a dog and a dog", "a", tokenizer) == [1, 4]


def test_int_positions(tokenizer: CLIPTokenizer) -> None:
    assert inds("a dog, a cat", 0, tokenizer) == [1]
    assert inds("a dog, a cat", 1, tokenizer) == [2]
    assert inds("a dog, a cat", 3, tokenizer) == [5]
    assert inds("a dog, a cat", np.int64(3), tokenizer) == [5]
    assert inds("a dog, a cat", 4, tokenizer) == []
    assert inds("a dog, a cat", -1, tokenizer) == []


def test_several_words(tokenizer: CLIPTokenizer) -> None:
    assert inds("a (red) ball, a red ball", "red ball", tokenizer) == [3, 5, 8, 9]
    assert inds("a red cup and a ball", "red ball", tokenizer) == []


def test_missing_word_gives_empty_array(tokenizer: CLIPTokenizer) -> None:
    result = get_word_inds("a dog, a cat", "horse", tokenizer)
    assert result.shape == (0,)


def test_bad_word_place(tokenizer: CLIPTokenizer) -> None:
    with pytest.raises(ValueError, match="1.5"):
        get_word_inds("a dog", 1.5, tokenizer)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        get_word_inds("a dog", "  ", tokenizer)


def test_find_word_tokens(tokenizer: CLIPTokenizer) -> None:
    assert find_word_tokens("a dog and a Dog.", "dog", tokenizer) == [2, 5]
    with pytest.raises(ValueError, match=r"'horse'.*\['a', 'dog', 'and', 'a', 'dog'\]"):
        find_word_tokens("a dog and a Dog.", "horse", tokenizer)


def test_alpha_float(tokenizer: CLIPTokenizer) -> None:
    alpha = get_time_words_attention_alpha(["a cat", "a dog", "a cow"], 9, 0.35, tokenizer)
    assert alpha.shape == (10, 2, 1, 1, 77)
    assert alpha.dtype == torch.float32
    # rows [0, int(0.35 * 10)) = [0, 3) are on for every token of every target.
    assert torch.all(alpha[:3] == 1)
    assert torch.all(alpha[3:] == 0)


def test_alpha_tuple(tokenizer: CLIPTokenizer) -> None:
    alpha = get_time_words_attention_alpha(["a cat", "a dog"], 4, (0.2, 0.6), tokenizer, max_num_words=5)
    assert alpha.shape == (5, 1, 1, 1, 5)
    assert alpha[:, 0, 0, 0, 0].tolist() == [0, 1, 1, 0, 0]
    assert torch.equal(alpha[:, 0, 0, 0, :], alpha[:, 0, 0, 0, :1].expand(5, 5))


def test_alpha_per_word_dict(tokenizer: CLIPTokenizer) -> None:
    prompts = ["a cat, sitting", "a dog, sitting", "a big dog"]
    steps = {"default_": 0.5, "Dog": (0.0, 0.25)}
    alpha = get_time_words_attention_alpha(prompts, 7, steps, tokenizer)[:, :, 0, 0, :]
    assert alpha.shape == (8, 2, 77)
    assert steps == {"default_": 0.5, "Dog": (0.0, 0.25)}  # input left untouched
    default_column = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0], dtype=torch.float32)
    dog_column = torch.tensor([1, 1, 0, 0, 0, 0, 0, 0], dtype=torch.float32)
    # target 0 "a dog, sitting": "dog" is token 2; its comma (3) keeps the default.
    assert torch.equal(alpha[:, 0, 2], dog_column)
    for position in (0, 1, 3, 4, 5, 76):
        assert torch.equal(alpha[:, 0, position], default_column)
    # target 1 "a big dog": "dog" is token 3.
    assert torch.equal(alpha[:, 1, 3], dog_column)
    assert torch.equal(alpha[:, 1, 2], default_column)


def test_alpha_dict_without_default_uses_whole_schedule(tokenizer: CLIPTokenizer) -> None:
    alpha = get_time_words_attention_alpha(["a cat", "a dog"], 3, {"dog": 0.5}, tokenizer)[:, 0, 0, 0, :]
    assert torch.all(alpha[:, [0, 1, 3, 76]] == 1)
    assert alpha[:, 2].tolist() == [1, 1, 0, 0]


@pytest.mark.parametrize(
    "steps, bad",
    [(1.5, "1.5"), ((-0.1, 0.5), "-0.1"), ({"dog": (0.2, 1.2)}, "1.2"), ({"default_": 2}, "2")],
)
def test_alpha_rejects_fractions_out_of_range(tokenizer: CLIPTokenizer, steps: object, bad: str) -> None:
    with pytest.raises(ValueError, match=rf"{bad}.*\[0, 1\]"):
        get_time_words_attention_alpha(["a cat", "a dog"], 10, steps, tokenizer)  # type: ignore[arg-type]


@pytest.mark.parametrize("steps", [(0.8, 0.2), "half", (0.1, 0.2, 0.3), {"dog": True}])
def test_alpha_rejects_malformed_bounds(tokenizer: CLIPTokenizer, steps: object) -> None:
    with pytest.raises(ValueError, match="cross_replace_steps"):
        get_time_words_attention_alpha(["a cat", "a dog"], 10, steps, tokenizer)  # type: ignore[arg-type]


def test_alpha_needs_two_prompts(tokenizer: CLIPTokenizer) -> None:
    with pytest.raises(ValueError, match="target prompt"):
        get_time_words_attention_alpha(["a cat"], 10, 0.8, tokenizer)
