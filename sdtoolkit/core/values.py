"""Editing values from the reference's literal syntax (flags, CSV cells) or from natural Python values (the API),
checked once: errors name the bad value and what is valid, and the setting by the front door's name for it
(:func:`sdtoolkit.core.naming.name`: ``--blend_word`` on the command line, ``blend`` in the API).

Blend words ``"[('dog',), ('tiger',)]"``, ``("dog", "tiger")`` or ``{"dog": "tiger"}``; reweighting
``"[('tiger',), (2,)]"`` or ``{"tiger": 2}``; taus ``"[.6,]"``, ``0.6``, ``"0.2,0.6"`` or ``[0.2, 0.6]``, and tau_c
also per word, ``{"tiger": 0.3, "default_": 0.6}`` (prompt-to-prompt's per-word cross-attention fractions).
"""
from __future__ import annotations

import ast
from collections.abc import Callable, Mapping, Sequence

from sdtoolkit.core.checks import check_fractions, check_per_word
from sdtoolkit.core.errors import UsageError
from sdtoolkit.core.naming import name
from sdtoolkit.core.settings import PER_WORD_TAUS, TAU_NAMES

Words = tuple[tuple[str, ...], tuple[str, ...]]
"""(source words, target words): the blend words."""
Reweight = tuple[tuple[str, ...], tuple[float, ...]]
"""(words, scales): the equalizer of the target's cross-attention (``--eq_params``)."""


def _literal(text: str, setting: str):
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError) as exc:
        raise UsageError(f"{name(setting)} {text!r} is not a Python literal list such as {example(setting)}") from exc


def example(setting: str) -> str:
    """An example value of ``setting`` in the reference's literal syntax."""
    return {
        "blend_word": "\"[('dog',), ('tiger',)]\"",
        "eq_params": "\"[('tiger',), (2,)]\"",
    }.get(setting, "[.6,] or 0.6 or 0.2,0.6")


def fraction_list(text: str | float | list, setting: str) -> list[float]:
    """Parse ``[.6,]``, ``0.6``, ``0.2,0.6`` or ``[0.2, 0.6]`` into fractions in [0, 1] (the tau ``setting``)."""
    value = text if not isinstance(text, str) else _literal(text if text.strip() else "x", setting)
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    return check_fractions(items, name(setting), text)


def cross_fractions(value: object, setting: str = "tau_c") -> list:
    """:func:`fraction_list`, or per-word fractions: a dict word → fraction or (start, end) pair (``"default_"``:
    every other token), or a list of such dicts and numbers; dicts are returned as dicts of floats."""
    items = [value] if isinstance(value, Mapping) else None
    if items is None and isinstance(value, (list, tuple)) and any(isinstance(v, Mapping) for v in value):
        items = list(value)
    if items is None:
        return fraction_list(value, setting)
    return [check_per_word(v, name(setting)) if isinstance(v, Mapping) else fraction_list(v, setting)[0]
            for v in items]


def tau_lists(get: Callable[[str], object], taus: Sequence[str] = TAU_NAMES) -> dict[str, list]:
    """Every tau of ``taus`` as a checked list, ``get(tau)`` giving its text or value (a flag, a CSV cell, a
    Python value); the per-word taus (:data:`PER_WORD_TAUS`) may hold dicts."""
    return {tau: (cross_fractions if tau in PER_WORD_TAUS else fraction_list)(get(tau), tau) for tau in taus}


def _word_group(value, setting: str, text: str) -> tuple[str, ...]:
    group = (value,) if isinstance(value, str) else value
    if not isinstance(group, (list, tuple)) or not all(isinstance(w, str) and w.strip() for w in group):
        raise UsageError(f"{name(setting)} {text!r}: {value!r} is not a tuple of words; expected {example(setting)}")
    return tuple(group)


def blend_words(text: str | tuple | list | Mapping | None) -> Words | None:
    """``"[('dog',), ('tiger',)]"``, ``("dog", "tiger")`` or ``{"dog": "tiger"}`` → (('dog',), ('tiger',));
    empty/None → None."""
    if text is None or (isinstance(text, str) and text.strip() in ("", "None")):
        return None
    value = _literal(text, "blend_word") if isinstance(text, str) else text
    if isinstance(value, Mapping):
        value = (tuple(value), tuple(w for v in value.values() for w in ((v,) if isinstance(v, str) else v)))
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise UsageError(f"{name('blend_word')} {text!r} must be two word groups (source, target), e.g. "
                         f"{example('blend_word')}")
    return _word_group(value[0], "blend_word", str(text)), _word_group(value[1], "blend_word", str(text))


def eq_params(text: str | tuple | list | Mapping | None) -> Reweight | None:
    """``"[('tiger',), (2,)]"`` or ``{"tiger": 2}`` → (('tiger',), (2.0,)); words and values must pair up."""
    if text is None or (isinstance(text, str) and text.strip() in ("", "None")):
        return None
    value = _literal(text, "eq_params") if isinstance(text, str) else text
    if isinstance(value, Mapping):
        value = (tuple(value), tuple(value.values()))
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise UsageError(f"{name('eq_params')} {text!r} must be [(words…), (values…)], e.g. {example('eq_params')}")
    words = _word_group(value[0], "eq_params", str(text))
    values = (value[1],) if isinstance(value[1], (int, float)) else value[1]
    if not isinstance(values, (list, tuple)) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
    ):
        raise UsageError(f"{name('eq_params')} {text!r}: {value[1]!r} is not a tuple of numbers")
    if len(words) != len(values):
        raise UsageError(
            f"{name('eq_params')} {text!r} has {len(words)} word(s) {list(words)} but {len(values)} value(s) {list(values)}"
        )
    return words, tuple(float(v) for v in values)
