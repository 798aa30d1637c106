"""scripts/mutation_check.py stays usable: every planted bug still applies to the current code (a refactor that moves
a patched line fails here, in seconds, instead of in the next hour-long mutation run)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _load_script():
    spec = importlib.util.spec_from_file_location("mutation_check", REPO / "scripts" / "mutation_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("mutation_check", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


MUTATION_CHECK = _load_script()


@pytest.mark.parametrize("mutant", MUTATION_CHECK.MUTANTS, ids=lambda m: m.name)
def test_each_planted_bug_applies_exactly_once_and_targets_existing_tests(mutant):
    assert MUTATION_CHECK.check_patch(REPO, mutant) is None
    assert mutant.old != mutant.new
    for target in mutant.tests:
        assert (REPO / target.split("::")[0]).is_file(), target


def test_mutant_names_are_unique():
    names = [m.name for m in MUTATION_CHECK.MUTANTS]
    assert len(names) == len(set(names))


def test_jobs_below_one_is_refused(capsys):
    assert MUTATION_CHECK.main(["--jobs", "0"]) == 2
    assert "--jobs 0" in capsys.readouterr().err
