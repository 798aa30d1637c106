"""Error messages name what the user touched (sdtoolkit.core.naming): the CLI's flag, the API's keyword, an app's
control; one message text, the name supplied by the front door. The API's common mistakes name its keywords and
never a ``--flag``; the CLIs' messages are unchanged; the names are restored after an exception and kept apart
between threads and asyncio tasks. Cheap: the checks run before any network (the tiny model)."""
from __future__ import annotations

import ast
import asyncio
import math
import re
import threading
from pathlib import Path

import pytest

import sdtoolkit as sd
from sdtoolkit.api import API_NAMES, CLI_ONLY, Inverted, Model
from sdtoolkit.core import checks
from sdtoolkit.core.naming import SETTINGS, front_door, name, names
from sdtoolkit.core.settings import EditConfig, InvertConfig

REPO = Path(__file__).resolve().parent.parent
CAT = str(REPO / "example_images" / "cat.jpg")
PROMPT, TARGET = "a cat sitting on a rug", "a dog sitting on a rug"
FLAG = re.compile(r"(?<![\w-])--[a-z]")


@pytest.fixture(scope="module")
def model(tiny) -> Model:
    return Model(tiny, "tiny", progress=False)


@pytest.fixture(scope="module")
def inverted() -> Inverted:
    """An inversion's settings only: every check of an edit runs before its networks are used."""
    return Inverted(InvertConfig(prompt=PROMPT, image_path=CAT, model="tiny", num_ddim_steps=4), None, None, {})


def raised(call) -> str:
    with pytest.raises(sd.UsageError) as info:
        call()
    return str(info.value)


# ------------------------------------------------------------------------------------ the mechanism

def test_default_names_are_the_cli_flags_and_a_front_door_renames_partially():
    assert name("blend_word") == "--blend_word" and name("num_inner_steps") == "--num_inner_steps"
    with front_door({"blend_word": "Blend words"}):
        assert name("blend_word") == "Blend words"
        assert name("num_inner_steps") == "--num_inner_steps"  # unmapped: the default
        assert names()["blend_word"] == "Blend words"
    assert name("blend_word") == "--blend_word"


def test_the_outer_front_door_wins_and_an_inner_one_fills_the_rest():
    """An app calling the API: the app's names win, the settings it leaves out keep the API's keywords."""
    with front_door({"blend_word": "Blend words"}):
        with front_door(API_NAMES):
            assert name("blend_word") == "Blend words"
            assert name("inversion") == "method"
        assert name("inversion") == "--inversion"


def test_unknown_settings_are_refused():
    with pytest.raises(KeyError, match="blend: not a setting"):
        with front_door({"blend": "Blend"}):
            pass
    with pytest.raises(KeyError):
        name("blend")


def test_names_are_restored_after_an_exception():
    with pytest.raises(sd.UsageError, match="^Seed -1 is not an integer"):
        with front_door({"seed": "Seed"}):
            checks.check_seed(-1)
    assert name("seed") == "--seed"
    assert raised(lambda: checks.check_seed(-1)).startswith("--seed -1 ")


def test_threads_keep_their_own_names():
    """Two threads, each in its own front door, check at the same time: each message names its own door's name."""
    barrier, out = threading.Barrier(2), {}

    def worker(label: str) -> None:
        with front_door({"num_inner_steps": label}):
            barrier.wait()  # both are inside their front doors now
            out[label] = raised(lambda: checks.check_counts(0, 1, 4))
            barrier.wait()
        out[label + " after"] = name("num_inner_steps")

    threads = [threading.Thread(target=worker, args=(label,)) for label in ("Inner steps", "inner")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out["Inner steps"].startswith("Inner steps, --num_epoch and --num_ddim_steps must be >= 1")
    assert out["inner"].startswith("inner, --num_epoch")
    assert out["Inner steps after"] == out["inner after"] == "--num_inner_steps"
    assert name("num_inner_steps") == "--num_inner_steps"  # this thread never saw either


def test_asyncio_tasks_keep_their_own_names():
    async def task(label: str) -> str:
        with front_door({"seed": label}):
            await asyncio.sleep(0)  # the other task runs inside its own front door here
            return raised(lambda: checks.check_seed(-1))

    async def both() -> list[str]:
        return await asyncio.gather(task("a"), task("b"))

    assert [m.split()[0] for m in asyncio.run(both())] == ["a", "b"]


def test_every_name_in_the_package_is_a_setting_and_every_setting_a_cli_flag():
    """``name("…")`` literals are canonical names (name() raises on others, in an error path a test may miss);
    every setting is a flag of some CLI, so the default ``--{setting}`` is real; API_NAMES covers the others."""
    used = set()
    for path in (REPO / "sdtoolkit").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "name" \
                    and node.args and isinstance(node.args[0], ast.Constant):
                used.add(node.args[0].value)
    assert used and used <= set(SETTINGS), sorted(used - set(SETTINGS))
    cli_text = "\n".join(p.read_text(encoding="utf-8") for p in (REPO / "sdtoolkit" / "cli").glob("*.py"))
    assert [s for s in SETTINGS if f'"--{s}"' not in cli_text and f"--{s}" not in cli_text] == []
    assert set(API_NAMES) == set(SETTINGS) - set(CLI_ONLY)


# ------------------------------------------------------------------------------------ the API's mistakes

BAD_EDITS = {
    "blend word absent": ({"blend": ("horse", "dog")}, "blend source word 'horse' is not in"),
    "blend target word absent": ({"blend": {"cat": "horse"}}, "blend target word 'horse' is not in"),
    "reweight word absent": ({"reweight": {"horse": 2}}, "reweight word 'horse' is not in"),
    "reweight not numbers": ({"reweight": {"dog": "x"}}, "reweight {'dog': 'x'}: ('x',) is not a tuple of numbers"),
    "blend malformed": ({"blend": [("cat",), ("dog",), ("x",)]}, "blend [('cat',), ('dog',), ('x',)] must be two"),
    "per-word tau_c word absent": ({"tau_c": {"horse": 0.3}}, "tau_c word 'horse' is not in"),
    "tau out of [0, 1]": ({"tau_s": 1.5}, "tau_s 1.5: 1.5 is outside [0, 1]"),
    "per-word tau out of [0, 1]": ({"tau_c": {"dog": 2}}, "tau_c['dog'] 2: 2 is outside [0, 1]"),
    "target over 77 tokens": ({"target": "dog " * 80}, "target has 82 tokens"),
    "Replacement unequal words": ({"target": "a big dog sitting on a rug"}, "use edit_type Refinement"),
    "unknown edit type": ({"edit_type": "Swap"}, "edit_type 'Swap' is not one of Replacement"),
    "mask missing": ({"mask": "no-such-mask.png"}, "mask 'no-such-mask.png' does not exist"),
}


@pytest.mark.parametrize("kwargs, needle", list(BAD_EDITS.values()), ids=list(BAD_EDITS))
def test_bad_edits_name_the_api_keyword(model, inverted, kwargs, needle):
    kwargs = {"target": TARGET, **kwargs}
    message = raised(lambda: model.edit(inverted, kwargs.pop("target"), **kwargs))
    assert needle in message and not FLAG.search(message), message


def _not_an_image(folder: Path) -> str:
    path = folder / "notes.png"
    path.write_text("not an image")
    return str(path)


BAD_INVERSIONS = {
    "num_inner_steps 0": ({"num_inner_steps": 0}, "num_inner_steps, num_epoch and num_ddim_steps must be >= 1"),
    "num_ddim_steps 0": ({"num_ddim_steps": 0}, "num_inner_steps, num_epoch and num_ddim_steps must be >= 1"),
    "num_ddim_steps 2000": ({"num_ddim_steps": 2000}, "num_ddim_steps 2000 is outside [1, 1000]"),
    "guidance nan": ({"guidance_scale": math.nan}, "guidance_scale nan is not a finite number"),
    "unknown method": ({"method": "nope"}, "method 'nope' is not one of stylediffusion"),
    "unknown schedule": ({"schedule": "quick"}, "schedule 'quick' is not one of reference, fast"),
    "seed negative": ({"seed": -1}, "seed -1 is not an integer"),
    "resolution off the size step": ({"resolution": 66}, "resolution 66 is not a multiple of"),
    "prompt over 77 tokens": ({"prompt": "cat " * 80}, "prompt has 82 tokens"),
    "image missing": ({"image": "no-such-image.png"}, "image 'no-such-image.png' does not exist"),
    "not an image": ({"image": _not_an_image}, "is not a readable image"),
}


@pytest.mark.parametrize("kwargs, needle", list(BAD_INVERSIONS.values()), ids=list(BAD_INVERSIONS))
def test_bad_inversions_name_the_api_keyword(model, tmp_path, kwargs, needle):
    kwargs = {"image": CAT, "prompt": PROMPT, "method": "npi", "num_ddim_steps": 4, **kwargs}
    if callable(kwargs["image"]):
        kwargs["image"] = kwargs["image"](tmp_path)
    message = raised(lambda: model.invert(kwargs.pop("image"), kwargs.pop("prompt"), **kwargs))
    assert needle in message and not FLAG.search(message), message
    if "image" in needle:
        assert message.startswith("image ")


def test_bad_generated_edits_and_loads_name_the_api_keyword(model):
    for call, needle in [
        (lambda: model.edit_generated(PROMPT, TARGET, seed=-1), "seed -1 is not an integer"),
        (lambda: model.edit_generated(PROMPT, TARGET, guidance_scale=math.inf), "guidance_scale inf is not a finite"),
        (lambda: model.edit_generated(PROMPT, TARGET, blend=("horse", "dog")), "blend source word 'horse'"),
        (lambda: sd.load("./no-such-model-folder", device="cpu"), "model './no-such-model-folder': no such folder"),
        (lambda: sd.load("tiny", device="gpu7"), "device 'gpu7' is not a torch device"),
        (lambda: sd.load("tiny", device="cpu", dtype="fp8"), "dtype 'fp8' is not one of"),
    ]:
        message = raised(call)
        assert needle in message and not FLAG.search(message), message


def test_an_app_names_its_controls_through_the_api(model, inverted):
    """A partial mapping around an API call: the app's label where it gives one, the API's keyword elsewhere."""
    with sd.front_door({"blend_word": "Blend words", "tau_c": "tau_c slider"}):
        message = raised(lambda: model.edit(inverted, TARGET, blend=("horse", "dog")))
        assert message.startswith("Blend words source word 'horse' is not in")
        message = raised(lambda: model.edit(inverted, TARGET, tau_c={"horse": 0.3}))
        assert message.startswith("tau_c slider word 'horse'")
        message = raised(lambda: model.invert(CAT, PROMPT, num_inner_steps=0))
        assert message.startswith("num_inner_steps, num_epoch")
    assert name("blend_word") == "--blend_word"


# ------------------------------------------------------------------------------------ one text, every door

def test_one_message_text_the_cli_and_the_api_differ_only_in_the_name(tiny):
    """validate_edit's message in the CLI's context (its exact text, as the CLI tests pin it) and in the API's."""
    edit = EditConfig(target=TARGET, blend_word=(("horse",), ("dog",)))
    cli_message = raised(lambda: checks.validate_edit(PROMPT, edit, tiny.tokenizer))
    with front_door(API_NAMES):
        api_message = raised(lambda: checks.validate_edit(PROMPT, edit, tiny.tokenizer))
    assert cli_message == ("--blend_word source word 'horse' is not in 'a cat sitting on a rug'; its tokens are: "
                           "['a', 'cat', 'sitting', 'on', 'a', 'rug']")
    assert api_message == cli_message.replace("--blend_word", "blend", 1)
    counts = raised(lambda: checks.check_counts(0, 1, 30))
    assert counts == "--num_inner_steps, --num_epoch and --num_ddim_steps must be >= 1 (got 0, 1, 30)"
