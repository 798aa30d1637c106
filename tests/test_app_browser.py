"""The app in a real browser: headless Chromium (the distribution's chromium + chromium-driver) driven by Selenium
uploads the toy photo, inverts, edits "red circle" → "blue circle" with blend words, reads the edited image from
the page; a 78-token target shows its one-line message and a second edit still works. Skipped only where no
Chromium is installed (``.ci/run`` installs it)."""
from __future__ import annotations

import io
import shutil
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

from app_server import REPO, app_server
from test_app import SOURCE, TARGET, toy_edit_holds

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="no Chromium here: the browser test needs the "
                                "distribution's chromium and chromium-driver (apt-get install chromium chromium-driver)")
IMAGE = REPO / "example_images" / "toy_red_circle.png"
CHROME_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic",
                "--window-size=1400,2400")


def browser(user_data):
    """Headless Chromium with a fresh profile (no network beyond loopback is needed or tried)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROME_FLAGS, f"--user-data-dir={user_data}"):
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


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    with app_server(tmp) as (url, _, log):
        driver = browser(tmp / "profile")
        try:
            driver.get(url)
            view = Page(driver, url)
            view.wait(120).until(lambda d: view.css("#invert"))
            yield view, log
        finally:
            driver.quit()


def test_invert_then_edit_in_the_browser_gives_the_blue_circle(page):
    view, log = page
    view.css("#upload input[type=file]").send_keys(str(IMAGE))
    view.type("prompt", SOURCE)
    view.type("inner", "20")
    view.type("steps", "10")
    view.css("#invert").click()
    seen_progress = set()

    def reconstructed(_):
        text = view.d.find_element("tag name", "body").text
        seen_progress.update(bar for bar in ("DDIM inversion", "training M_t") if bar in text)
        return view.image_src("reconstruction") is not None or view.status().startswith("Error")

    view.wait().until(reconstructed)
    assert view.status() == "", view.status()
    assert "training M_t" in seen_progress  # the CLI's bar, drawn in the page while it trained
    panels = view.image("reconstruction")
    assert panels.shape == (64, 3 * 64, 3)
    view.tab("Edit")
    view.type("target", TARGET)
    time.sleep(1)  # the word pickers follow the target
    view.pick("blend_src", "red")
    view.pick("blend_tgt", "blue")
    view.css("#edit").click()
    view.wait().until(lambda _: view.image_src("edited") is not None or view.status().startswith("Error"))
    assert view.status() == "", view.status()
    toy_edit_holds(panels[:, :64], view.image("edited"))
    assert "python stylediffusion.py --is_train ''" in view.css("#command textarea, #command input").get_attribute("value")
    first = view.image_src("edited")

    view.type("target", " ".join(["blue"] * 78))
    view.css("#edit").click()
    view.wait().until(lambda _: view.status().startswith("Error"))
    message = view.status()
    assert "Target prompt has 80 tokens" in message and "\n" not in message and "--" not in message, message
    assert "Traceback" not in view.d.page_source

    view.type("target", "a blue circle on a red background")
    view.css("#edit").click()
    view.wait().until(lambda _: view.status() == "" and view.image_src("edited") not in (None, first))
    assert "Traceback" not in log.read_text()
