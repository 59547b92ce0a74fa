"""The web page of `sunfish serve` in a real headless browser (Debian's chromium through chromedriver).

It loads the page from a real server, submits a prompt, and checks that the canvas was drawn step by step
(some cells committed while others were still masked), that the final text and the timing arrived, and that
the Russian interface switches the labels. The finished page is saved to tests/artifacts/serve_page.png.

SUNFISH_PAGE_MODEL=PATH serves that model instead of a small one trained here; SUNFISH_SCREENSHOT_DOCS=1
also saves the page mid-denoising to docs/serve_page.png (made with SUNFISH_PAGE_MODEL=runs/quickstart)."""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest

from serving import ROOT, needs_serve_extra, start_server, train_small

needs_serve_extra()
pytest.importorskip("selenium", reason="selenium is not installed (pip install -e .[dev])")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)",
                allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

DOCS = os.environ.get("SUNFISH_SCREENSHOT_DOCS") == "1"
MODEL = os.environ.get("SUNFISH_PAGE_MODEL")
TOKENS, BLOCK, STEPS = (96, 32, 96) if DOCS else (48, 16, 24)  # several tokens a step: many intermediate canvases

# Records every state of the canvas the page draws: (committed cells, masked cells) after each change.
WATCH = """
window.seen = [];
new MutationObserver(() => {
  const cells = document.querySelectorAll('#canvas .cell');
  const masked = document.querySelectorAll('#canvas .cell.masked').length;
  window.seen.push([cells.length - masked, masked, document.querySelector('#step').dataset.step || null]);
}).observe(document.querySelector('#canvas'), {subtree: true, childList: true, attributes: true});
"""


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return Path(MODEL) if MODEL else train_small(tmp_path_factory.mktemp("page") / "run")


@pytest.fixture(scope="module")
def server(model):
    s = start_server(model, *([] if MODEL else ["--name", "tiny-stories"]))
    yield s
    assert s.stop() == 0


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--lang=en-US"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",  # the page itself, 1200 x 640: all of it, little blank
                           {"width": 1200, "height": 640, "deviceScaleFactor": 1, "mobile": False})
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def text(browser, selector: str) -> str:
    return browser.find_element(By.CSS_SELECTOR, selector).text


def load(browser, url: str) -> WebDriverWait:
    browser.get(url + "/")
    wait = WebDriverWait(browser, 60, poll_frequency=0.1)
    wait.until(lambda b: b.find_elements(By.ID, "f-steps"))  # the controls are built from /v1/sunfish
    return wait


def test_the_page_streams_the_canvas_and_switches_to_russian(server, browser):
    wait = load(browser, server.url)
    assert "masked diffusion" in text(browser, "#model") and (MODEL or "tiny-stories" in text(browser, "#model"))
    assert text(browser, "#submit") == "Generate"

    browser.find_element(By.ID, "prompt").send_keys("Once upon a time")
    for name, value in (("max_tokens", TOKENS), ("steps", STEPS), ("block_length", BLOCK), ("seed", 7)):
        field = browser.find_element(By.ID, f"f-{name}")
        field.clear()
        field.send_keys(str(value))
    browser.execute_script(WATCH)
    began = time.monotonic()
    browser.find_element(By.ID, "submit").click()
    if DOCS:  # the page mid-denoising (or finished, if the model outran the poll)
        wait.until(lambda b: int(b.find_element(By.ID, "step").get_attribute("data-step") or 0) >= STEPS // 2
                   or text(b, "#stats"))
        browser.save_screenshot(str(ROOT / "docs" / "serve_page.png"))
    wait.until(lambda b: "NFE" in text(b, "#stats") or text(b, "#error"))
    seconds = time.monotonic() - began
    assert text(browser, "#error") == ""

    seen = browser.execute_script("return window.seen")
    partial = [s for s in seen if s[0] > 0 and s[1] > 0]
    assert partial, f"no canvas with both committed and masked cells was drawn ({len(seen)} states seen)"
    assert len({s[2] for s in partial}) >= 3, "fewer than three distinct steps were drawn"
    cells = browser.find_elements(By.CSS_SELECTOR, "#canvas .cell")
    assert len(cells) == TOKENS
    assert len(browser.find_elements(By.CSS_SELECTOR, "#canvas .cell.block-start")) == TOKENS // BLOCK - 1
    stats = text(browser, "#stats")
    steps = int(re.search(r"steps (\d+)", stats).group(1))
    assert int(browser.find_element(By.ID, "step").get_attribute("data-step")) == steps  # the last step drawn
    if "finish length" in stats:  # not ended early by an end of text: every cell committed, every step taken
        assert not browser.find_elements(By.CSS_SELECTOR, "#canvas .cell.masked") and steps == STEPS
        assert browser.find_element(By.ID, "output").get_attribute("textContent") != ""
    artifacts = ROOT / "tests" / "artifacts"
    artifacts.mkdir(exist_ok=True)
    browser.save_screenshot(str(artifacts / "serve_page.png"))

    browser.find_element(By.ID, "lang").click()
    assert text(browser, "#submit") == "Сгенерировать"
    assert text(browser, "label[for=prompt]") == "Запрос"
    assert f"шаги {steps}" in text(browser, "#stats")
    browser.find_element(By.ID, "lang").click()
    assert text(browser, "#submit") == "Generate"
    print(f"decoded and drawn in {seconds:.1f} s, {len(seen)} canvas states")


def test_chat_mode_streams_too(server, browser):
    wait = load(browser, server.url)
    browser.find_element(By.ID, "mode-chat").click()
    browser.find_element(By.ID, "prompt").send_keys("Расскажи сказку.")
    browser.find_element(By.ID, "submit").click()
    wait.until(lambda b: "NFE" in text(b, "#stats") or text(b, "#error"))
    assert text(browser, "#error") == ""
    assert browser.find_elements(By.CSS_SELECTOR, "#canvas .cell")


def test_a_refused_request_shows_the_servers_error(server, browser):
    wait = load(browser, server.url)
    field = browser.find_element(By.ID, "f-max_tokens")
    browser.execute_script("arguments[0].removeAttribute('max'); arguments[0].value = '100000'", field)
    browser.find_element(By.ID, "prompt").send_keys("Hello")
    browser.find_element(By.ID, "submit").click()
    wait.until(lambda b: text(b, "#error"))
    assert "400" in text(browser, "#error") and "max_tokens" in text(browser, "#error")
    assert browser.find_element(By.ID, "submit").is_enabled()



def test_the_api_key_is_asked_for_then_sent(model, browser):
    s = start_server(model, "--api-key", "page-key")
    try:
        browser.get(s.url + "/")
        wait = WebDriverWait(browser, 60, poll_frequency=0.1)
        wait.until(lambda b: "401" in text(b, "#error"))  # /v1/sunfish needs the key too
        assert not browser.find_elements(By.ID, "f-steps")
        key = browser.find_element(By.ID, "key")
        key.send_keys("page-key")
        browser.find_element(By.ID, "prompt").click()  # the key is taken when it loses focus
        wait.until(lambda b: b.find_elements(By.ID, "f-steps"))
        assert text(browser, "#error") == ""
        browser.find_element(By.ID, "prompt").send_keys("Hi")
        browser.find_element(By.ID, "submit").click()
        wait.until(lambda b: "NFE" in text(b, "#stats") or text(b, "#error"))
        assert text(browser, "#error") == ""
    finally:
        browser.execute_script("localStorage.clear()")
        assert s.stop() == 0
