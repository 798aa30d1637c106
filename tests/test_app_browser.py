"""The app in a real browser: headless Chromium (the distribution's chromium + chromium-driver) driven by Selenium
uploads the toy photo, inverts (the training bar shows in the page), edits "red circle" → "blue circle" with blend
words and the edited image read from the page holds the toy ground truth; a 78-token target shows its one-line
message and a second edit still works. Skipped only where no Chromium is installed (``.ci/run`` installs it)."""
from __future__ import annotations

import pytest

from scripts.app_screenshot import CHROMIUM, DRIVER, Page, app_server, browser, invert_and_edit
from test_app import toy_edit_holds

pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="no Chromium here: the browser test needs the "
                                "distribution's chromium and chromium-driver (apt-get install chromium chromium-driver)")


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    with app_server(tmp) as (url, _, log):
        driver = browser(tmp / "profile")
        try:
            driver.get(url)
            view = Page(driver, url)
            view.wait(120).until(lambda _: view.css("#invert"))
            yield view, log
        finally:
            driver.quit()


def test_invert_then_edit_in_the_browser_gives_the_blue_circle(page):
    view, log = page
    seen = invert_and_edit(view)
    assert view.status() == "", view.status()
    assert "training M_t" in seen  # the CLI's bar, drawn in the page while it trained
    panels = view.image("reconstruction")
    assert panels.shape == (64, 3 * 64, 3)
    toy_edit_holds(panels[:, :64], view.image("edited"))
    assert "python stylediffusion.py --is_train ''" in view.css("#command textarea").get_attribute("value")
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
