"""The app in headless Chromium: start ``app.py --model toy``, upload the toy photo, invert, edit "red circle" →
"blue circle" with blend words, and write the page as ``docs/images/app.png`` (the README's screenshot).

    python scripts/app_screenshot.py            # needs the distribution's chromium + chromium-driver

The same server, browser and page helpers drive ``tests/test_app_browser.py`` and ``tests/test_app_concurrent.py``.
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
IMAGE = REPO / "example_images" / "toy_red_circle.png"
SOURCE = "a red circle on a green background"
TARGET = "a blue circle on a green background"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def app_server(tmp: Path, *flags: str, timeout: float = 240.0) -> Iterator[tuple[str, subprocess.Popen, Path]]:
    """The app serving the toy model at ``http://127.0.0.1:{port}/``; yields (url, process, log file). The server
    is stopped on exit."""
    port = free_port()
    log = tmp / "server.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "GRADIO_TEMP_DIR": str(tmp / "gradio")}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--model", "toy", "--port", str(port),
                                 "--output_dir", str(tmp / "outputs"), *flags], cwd=tmp, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the app exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the app did not answer in {timeout} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, proc, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
CHROME_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic")


def browser(user_data: Path, size: tuple[int, int] = (1400, 2400)):
    """Headless Chromium with a fresh profile and a ``size`` window (no network beyond loopback is needed or
    tried)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROME_FLAGS, f"--user-data-dir={user_data}", f"--window-size={size[0]},{size[1]}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(DRIVER), options=options)


class Page:
    """The app's page through Selenium, by the elements' ids (sdtoolkit/app/ui.py)."""

    def __init__(self, driver, url: str) -> None:
        from selenium.webdriver.support.ui import WebDriverWait

        self.d, self.url = driver, url
        self.wait = lambda seconds=240: WebDriverWait(driver, seconds, poll_frequency=0.2)

    def css(self, selector: str):
        from selenium.webdriver.common.by import By

        return self.d.find_element(By.CSS_SELECTOR, selector)

    def type(self, elem_id: str, text: str) -> None:
        from selenium.webdriver.common.keys import Keys

        box = self.css(f"#{elem_id} textarea, #{elem_id} input")
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(Keys.DELETE)
        box.send_keys(text)
        box.send_keys(Keys.TAB)

    def pick(self, elem_id: str, word: str) -> None:
        """Choose ``word`` in a multiselect word picker."""
        from selenium.webdriver.common.keys import Keys

        from selenium.common.exceptions import ElementClickInterceptedException

        box = self.css(f"#{elem_id} input")
        for _ in range(50):  # the picker is briefly covered while its choices follow the prompt
            try:
                box.click()
                break
            except ElementClickInterceptedException:
                time.sleep(0.2)
        box.send_keys(word)
        box.send_keys(Keys.ENTER)
        box.send_keys(Keys.ESCAPE)

    def tab(self, name: str) -> None:
        from selenium.webdriver.common.by import By

        self.d.find_element(By.XPATH, f"//button[@role='tab' and normalize-space()='{name}']").click()

    def image_src(self, elem_id: str) -> str | None:
        from selenium.webdriver.common.by import By

        found = self.d.find_elements(By.CSS_SELECTOR, f"#{elem_id} img")
        return found[0].get_attribute("src") if found else None

    def image(self, elem_id: str) -> np.ndarray:
        with urllib.request.urlopen(self.image_src(elem_id), timeout=30) as answer:
            return np.asarray(Image.open(io.BytesIO(answer.read())).convert("RGB")).astype(np.float64)

    def status(self) -> str:
        return self.css("#status").text.strip()


def invert_and_edit(view: Page, inner_steps: int = 20, steps: int = 10) -> set[str]:
    """Upload the toy photo, invert it, then edit it into :data:`TARGET` with blend words red / blue; returns the
    progress bars seen in the page while it inverted."""
    view.css("#upload input[type=file]").send_keys(str(IMAGE))
    view.type("prompt", SOURCE)
    view.type("inner", str(inner_steps))
    view.type("steps", str(steps))
    view.css("#invert").click()
    seen: set[str] = set()

    def reconstructed(_) -> bool:
        text = view.d.find_element("tag name", "body").text
        seen.update(bar for bar in ("DDIM inversion", "training M_t") if bar in text)
        return view.image_src("reconstruction") is not None or view.status().startswith("Error")

    view.wait().until(reconstructed)
    if view.status():
        return seen
    view.tab("Edit")
    view.type("target", TARGET)
    time.sleep(1)  # the word pickers follow the target
    view.pick("blend_src", "red")
    view.pick("blend_tgt", "blue")
    view.css("#edit").click()
    view.wait().until(lambda _: view.image_src("edited") is not None or view.status().startswith("Error"))
    return seen


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default=str(REPO / "docs" / "images" / "app.png"), help="where the screenshot goes")
    args = p.parse_args(argv)
    if not (CHROMIUM and DRIVER):
        print("error: needs chromium and chromedriver (apt-get install chromium chromium-driver)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp, app_server(Path(tmp)) as (url, _, _):
        driver = browser(Path(tmp) / "profile", size=(1400, 1500))
        try:
            driver.get(url)
            view = Page(driver, url)
            view.wait(120).until(lambda _: view.css("#invert"))
            invert_and_edit(view)
            if view.status():
                print(f"error: the page says {view.status()}", file=sys.stderr)
                return 1
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(args.out)
        finally:
            driver.quit()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
