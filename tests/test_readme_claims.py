"""README claims checked: every walkthrough command accepts ``--model tiny``; bad input stops with exit status 2
and one line (argparse's own errors included, str2bool's message reaching the user)."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from sdtoolkit.cli import p2plus, pie_bench, stylediffusion, stylediffusion_csv
from sdtoolkit.cli import ns_lpips, pie_metrics, storemask

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")
CLI_DOC = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")  # the walkthrough moved here from the README

PARSE = {
    "stylediffusion.py": lambda argv: stylediffusion.build_parser().parse_args(argv),
    "stylediffusion_csv.py": lambda argv: stylediffusion_csv.build_parser().parse_args(argv),
    "p2plus.py": lambda argv: p2plus.build_parser().parse_args(argv),
    "eval_metrics/storemask.py": lambda argv: storemask.build_parser().parse_args(argv),
    "eval_metrics/ns_lpips.py": ns_lpips.parse_args,
    "pie_bench.py": lambda argv: pie_bench.build_parser().parse_args(argv),
    "eval_metrics/pie_metrics.py": pie_metrics.parse_args,
}


def walkthrough_commands(text: str = CLI_DOC, heading: str = "## Walkthrough") -> list[list[str]]:
    """The ``python …`` commands of a section (docs/cli.md's walkthrough; the README's two commands), continuation
    lines joined, as argv lists."""
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    text = section.replace("\\\n", " ")
    commands = [shlex.split(line.strip().replace("$R", "results"))
                for line in text.splitlines() if line.strip().startswith("python ")]
    return [c[1:] for c in commands]


COMMANDS = walkthrough_commands()
README_COMMANDS = walkthrough_commands(README, "## The two commands")


def test_the_walkthrough_has_its_commands():
    assert "Every command below also runs with `--model tiny` appended." in CLI_DOC.split("## Walkthrough", 1)[1]
    assert [c[0] for c in README_COMMANDS] == ["stylediffusion.py", "stylediffusion.py", "stylediffusion_csv.py"]
    assert [c[0] for c in COMMANDS] == ["stylediffusion.py", "stylediffusion.py", "stylediffusion_csv.py",
                                        "stylediffusion_csv.py", "eval_metrics/storemask.py", "eval_metrics/ns_lpips.py"]


@pytest.mark.parametrize("command", COMMANDS + README_COMMANDS, ids=lambda c: " ".join(c[:3]))
def test_every_walkthrough_command_accepts_model_tiny_appended(command):
    args = PARSE[command[0]](command[1:] + ["--model", "tiny"])
    assert args.model == "tiny"


def test_ns_lpips_model_tiny_uses_random_weights_offline():
    args = ns_lpips.parse_args(["--model", "tiny"])
    assert args.offline_random_weights
    assert not ns_lpips.parse_args([]).offline_random_weights


BAD_INT = {"stylediffusion.py": "--num_ddim_steps", "p2plus.py": "--num_ddim_steps",
           "eval_metrics/pie_metrics.py": None}  # others: --from_case; None: no int flag
REQUIRED = {"stylediffusion.py": ["--prompt", "a cat", "--image_path", "x.png"], "p2plus.py": ["--prompt", "a", "--target", "b"],
            "pie_bench.py": ["--data_path", "d", "--output_path", "o"],
            "eval_metrics/pie_metrics.py": ["--data_path", "d", "--output_path", "o"]}


@pytest.mark.parametrize("script, kind", [(s, k) for s in PARSE for k in ("unknown flag", "bad int")
                                          if k == "unknown flag" or BAD_INT.get(s, "") is not None])
def test_argparse_errors_are_one_line_with_exit_status_2(script, kind, capsys):
    bad = ["--no_such_flag", "1"] if kind == "unknown flag" else [BAD_INT.get(script, "--from_case"), "x"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        PARSE[script](REQUIRED.get(script, []) + bad)
    assert info.value.code == 2
    captured = capsys.readouterr()
    lines = [l for l in captured.err.splitlines() if l.strip()]
    assert len(lines) == 1, captured.err
    assert re.match(r"^\S+: error: ", lines[0]), lines[0]
    assert ("unrecognized arguments: --no_such_flag 1" if kind == "unknown flag" else f"{bad[0]}: invalid int") in lines[0]
    assert "usage:" not in captured.err and captured.out == ""


def test_a_bad_boolean_is_one_line_naming_the_value(capsys):
    with pytest.raises(SystemExit) as info:
        stylediffusion.build_parser().parse_args(["--is_train", "maybe", "--prompt", "a cat", "--image_path", "x.png"])
    assert info.value.code == 2
    lines = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert len(lines) == 1
    assert "--is_train" in lines[0] and "'maybe' is not a boolean: use True/False, 1/0, yes/no or '' (false)" in lines[0]


def test_a_process_with_a_bad_flag_prints_one_line_and_exits_2(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "stylediffusion.py"), "--prompt", "a cat", "--image_path", "x",
                           "--num_ddim_steps", "thirty"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "stylediffusion.py: error: argument --num_ddim_steps: invalid int value: 'thirty'"]
    assert proc.stdout == ""


def test_help_still_prints_the_full_usage(capsys):
    with pytest.raises(SystemExit) as info:
        stylediffusion.build_parser().parse_args(["--help"])
    assert info.value.code == 0
    assert "usage:" in capsys.readouterr().out
