"""The package's layers import only downward, as the README's layout table says; no file edits sys.path."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SKIP_DIRS = {"tests", ".venv", "build", "dist"}


def layer_table() -> list[tuple[str, list[str]]]:
    """(layer, path prefixes) from the README's layout table, lowest layer first."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0].startswith("**") and cells[0].endswith("**"):
            rows.append((cells[0].strip("*"), re.findall(r"`([^`]+)`", cells[1])))
    return rows


LAYERS = layer_table()
RANK = {name: k for k, (name, _) in enumerate(LAYERS)}


def layer_of(rel: str) -> str | None:
    """The layer of a repository path (longest matching prefix of the table)."""
    best, best_len = None, -1
    for name, prefixes in LAYERS:
        for prefix in prefixes:
            if (rel == prefix or (prefix.endswith("/") and rel.startswith(prefix))) and len(prefix) > best_len:
                best, best_len = name, len(prefix)
    return best


def sources() -> list[Path]:
    out = []
    for path in REPO.rglob("*.py"):
        parts = path.relative_to(REPO).parts
        if parts[0] in SKIP_DIRS or any(p.startswith(".") for p in parts):
            continue
        out.append(path)
    return sorted(out)


def module_path(dotted: str) -> str | None:
    """Repository path of a local module or package (None for third-party modules)."""
    base = REPO.joinpath(*dotted.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py").relative_to(REPO).as_posix()
    if (base / "__init__.py").is_file():
        return (base / "__init__.py").relative_to(REPO).as_posix()
    return None


def imported(rel: str, text: str) -> list[tuple[int, str]]:
    """(line, repository path) of every local module that the file ``rel`` imports, at any depth in the file."""
    package = Path(rel).parts[:-1]
    out = []
    for node in ast.walk(ast.parse(text)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(list(package[: len(package) - node.level + 1]) + ([base] if base else []))
            names = [f"{base}.{a.name}" if module_path(f"{base}.{a.name}") else base for a in node.names]
        for name in names:
            target = module_path(name)
            if target is not None:
                out.append((node.lineno, target))
    return out


def test_readme_names_the_layers_in_order():
    assert [name for name, _ in LAYERS] == ["core", "control", "methods", "jobs", "evaluation", "api", "cli", "app",
                                           "top"]


def test_the_app_imports_only_the_api():
    """The browser app is a front door on the Python API: it reaches the toolkit through ``sdtoolkit`` (the API)
    and its own modules, nothing below."""
    app = [p for p in sources() if p.relative_to(REPO).as_posix().startswith("sdtoolkit/app/")]
    assert app
    below = [f"{p.relative_to(REPO)}:{line} imports {target}" for p in app
             for line, target in imported(p.relative_to(REPO).as_posix(), p.read_text(encoding="utf-8"))
             if not (target.startswith("sdtoolkit/app/") or target in ("sdtoolkit/__init__.py", "sdtoolkit/api.py"))]
    assert not below, "the app imports below the API:\n" + "\n".join(below)


def test_every_source_file_belongs_to_a_layer():
    unplaced = [p.relative_to(REPO).as_posix() for p in sources() if layer_of(p.relative_to(REPO).as_posix()) is None]
    assert not unplaced, f"add these to the README's layout table: {unplaced}"


def upward_imports(rel: str, text: str) -> list[str]:
    """The imports of file ``rel`` (source ``text``) that reach a higher layer than its own."""
    mine = layer_of(rel)
    out = []
    for line, target in imported(rel, text):
        theirs = layer_of(target)
        if theirs is not None and RANK[theirs] > RANK[mine]:
            out.append(f"{rel}:{line} ({mine}) imports {target} ({theirs})")
    return out


def test_imports_run_only_downward():
    upward = [u for p in sources() for u in upward_imports(p.relative_to(REPO).as_posix(), p.read_text(encoding="utf-8"))]
    assert not upward, "imports that run upward:\n" + "\n".join(upward)


@pytest.mark.parametrize("text", [
    "from sdtoolkit.jobs.edit import run_edit",
    "from sdtoolkit.jobs import edit",
    "import ptp_utils",
    "def f():\n    from ..control import controllers",
])
def test_an_upward_import_is_reported(text):
    """The check itself: a core module importing a job, a top-level script or (relatively) a controller."""
    assert upward_imports("sdtoolkit/core/words.py", text)


def test_a_downward_import_passes():
    assert not upward_imports("sdtoolkit/jobs/edit.py", "from sdtoolkit.core import checks\nfrom ..methods import sampler")


@pytest.mark.parametrize("path", sources(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_no_sys_path_edits_and_a_one_line_docstring(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name) \
                and node.value.id == "sys":
            pytest.fail(f"{path.relative_to(REPO)}:{node.lineno} uses sys.path; install the package instead")
    doc = ast.get_docstring(tree)
    if path.stat().st_size:
        assert doc and doc.strip().splitlines()[0].strip(), f"{path.relative_to(REPO)} lacks a docstring saying its job"
