"""Several users, one model: four ``gradio_client`` users invert and edit at once on loopback (the toy model);
each gets its own prompt's edit and none an error; the server's memory after 20 edits stays within 10 % of
after the first 2 (sessions' inversions are bounded); the app serves no file outside its examples and outputs."""
from __future__ import annotations

import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app_server import REPO, app_server
from sdtoolkit.evaluation.toy_scores import nearest
from toyworld.scenes import PALETTE

SOURCE = "a red circle on a green background"
COLOURS = ("blue", "white", "black", "yellow")
EDITS_EACH = 5


def rss_kib(pid: int) -> int:
    """The process's resident memory (VmRSS, KiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def disc_colour(path: str) -> str:
    """The palette colour nearest the mean of the toy photo's disc in an edited image."""
    source = np.asarray(Image.open(REPO / "example_images" / "toy_red_circle.png").convert("RGB")).astype(float)
    edited = np.asarray(Image.open(path).convert("RGB")).astype(float)
    disc = (source[..., 0] > 150) & (source[..., 1] < 100)
    return nearest(edited[disc].mean(0), PALETTE)


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the server's memory from /proc")
def test_four_users_at_once_get_their_own_edits_and_memory_stays_flat(tmp_path):
    from gradio_client import Client

    with app_server(tmp_path, "--per_session", "1") as (url, proc, log):
        done, memory, errors, results = [0], {}, [], {}
        lock = threading.Lock()

        def user(colour: str) -> None:
            try:
                client = Client(url, verbose=False)
                status, *_, label, _ = client.predict(None, "toy_red_circle.png", SOURCE, "stylediffusion",
                                                       "reference", 5, 10, 7.5, 0, 0, False, api_name="/invert")
                label = label["value"] if isinstance(label, dict) else label  # the picker's update
                assert status == "" and label == "inversion-1", status
                target = f"a {colour} circle on a green background"
                for _ in range(EDITS_EACH):
                    status, edited, command, *_ = client.predict(
                        label, target, "auto (by word counts)", ["red"], [colour], None, 2.0, None, 0.3,
                        0.5, 0.6, 0.6, 0.0, api_name="/edit")
                    assert status == "", status
                    with lock:
                        done[0] += 1
                        if done[0] == 2:
                            memory["after 2"] = rss_kib(proc.pid)
                    results.setdefault(colour, []).append((edited, command))
            except Exception as exc:  # noqa: BLE001 - every user's failure is reported below
                errors.append(f"{colour}: {type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=user, args=(c,)) for c in COLOURS]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=900)
        memory["after 20"] = rss_kib(proc.pid)
        assert not errors, errors
        assert done[0] == len(COLOURS) * EDITS_EACH
        for colour, edits in results.items():
            assert all(f"--target 'a {colour} circle on a green background'" in command for _, command in edits)
            assert disc_colour(edits[-1][0]) == colour, colour
        assert memory["after 20"] <= 1.10 * memory["after 2"], memory

        for outside in ("/etc/passwd", str(REPO / "README.md"), str(tmp_path / "server.log")):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(f"{url}gradio_api/file={outside}", timeout=10)
            assert refused.value.code in (403, 404), outside
        example = REPO / "example_images" / "toy_red_circle.png"
        with urllib.request.urlopen(f"{url}gradio_api/file={example}", timeout=10) as answer:
            assert answer.read() == example.read_bytes()
        assert "Traceback" not in log.read_text()
