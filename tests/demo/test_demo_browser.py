"""The demo page in a real browser: `python recipes/demo.py --port N` in a subprocess, driven by headless Debian
Chromium through selenium. The page loads; a picked toy scene with a PIN question, and an uploaded image with a
Groma question, each come back with boxes (the JSON output lists them and the drawn image is shown).

Needs /usr/bin/chromium and /usr/bin/chromedriver (Debian packages chromium, chromium-driver; .ci/run installs
them). The driver path is given explicitly, so Selenium Manager never downloads a driver.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is absent: apt-get install chromium chromium-driver", allow_module_level=True)
pytest.importorskip("gradio", reason="the demo needs gradio: pip install -e '.[dev]'")
pytest.importorskip("selenium", reason="the browser test needs selenium: pip install -e '.[dev]'")

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from groundvlm.recipes.systems.demo.scenes import toy_scenes  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)  # fmt: skip
STARTUP_S, ANSWER_S = 40, 30


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def demo_url(tmp_path_factory):
    """The demo server, started as a user starts it, on a free localhost port; stopped after the module."""
    port, tmp = _free_port(), tmp_path_factory.mktemp("demo-server")
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", GRADIO_TEMP_DIR=str(tmp / "gradio"))
    log = open(tmp / "server.log", "w+")  # closed in the finally below
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "recipes" / "demo.py"), "--port", str(port), "--device", "cpu"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                pytest.fail(f"the demo server did not come up on {url} (exit {proc.poll()}):\n{log.read()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _src(driver, selector: str) -> str | None:
    images = driver.find_elements(By.CSS_SELECTOR, selector)
    return images[0].get_attribute("src") if images else None


def _submit_and_read(driver, question: str, task_prefix: str) -> tuple[list[dict], str]:
    """Choose the task, type the question, press Ground; wait for a new drawn image; return (boxes JSON, its src)."""
    driver.find_element(By.CSS_SELECTOR, f'#task input[value^="{task_prefix}"]').click()
    box = driver.find_element(By.CSS_SELECTOR, "#question textarea")
    box.clear()
    box.send_keys(question)
    before = _src(driver, "#output-image img")
    driver.find_element(By.ID, "submit").click()
    WebDriverWait(driver, ANSWER_S).until(lambda d: _src(d, "#output-image img") not in (None, before))
    # gr.JSON renders one token per line under its label; joined, the lines are the JSON text again.
    text = driver.find_element(By.ID, "boxes-json").text
    boxes = json.loads("".join(text[text.index("[") :].splitlines()))
    return boxes, _src(driver, "#output-image img")


def _image_loaded(driver, selector: str) -> bool:
    script = "const i = document.querySelector(arguments[0]); return !!i && i.complete && i.naturalWidth > 0;"
    return driver.execute_script(script, selector)


@pytest.mark.timeout(180)
def test_demo_page_grounds_a_picked_scene_and_an_upload(demo_url, browser, tmp_path):
    browser.get(demo_url)
    WebDriverWait(browser, ANSWER_S).until(lambda d: d.find_elements(By.ID, "submit"))
    assert "untrained" in browser.find_element(By.ID, "systems").text  # the defaults say what they are

    # Pick toy scene 1 (the input image changes), ask PIN for one of its objects.
    scene = toy_scenes(2)[1]
    first = _src(browser, "#input-image img")
    browser.find_element(By.CSS_SELECTOR, '#scene input[value^="scene 1:"]').click()
    WebDriverWait(browser, ANSWER_S).until(lambda d: _src(d, "#input-image img") not in (None, first))
    name = scene.objects[0][0]
    boxes, _ = _submit_and_read(browser, name, "PIN")
    assert len(boxes) == 1 and boxes[0]["phrase"] == name and len(boxes[0]["box"]) == 4
    WebDriverWait(browser, ANSWER_S).until(lambda d: _image_loaded(d, "#output-image img"))

    # Upload an image file, ask Groma to locate an expression and to list 3 region proposals.
    path = tmp_path / "upload.png"
    toy_scenes(3)[2].image.save(path)
    before = _src(browser, "#input-image img")
    browser.find_element(By.CSS_SELECTOR, "#input-image button[aria-label='Remove Image']").click()
    browser.find_element(By.CSS_SELECTOR, "#input-image input[type=file]").send_keys(str(path))
    WebDriverWait(browser, ANSWER_S).until(lambda d: _src(d, "#input-image img") not in (None, before))
    proposals = browser.find_element(By.CSS_SELECTOR, "#proposals input[type=number]")
    proposals.clear()
    proposals.send_keys("3")
    boxes, _ = _submit_and_read(browser, "the yellow triangle", "Groma: locate")
    assert [b["phrase"] for b in boxes if b["source"] == "proposal"] == ["<r0>", "<r1>", "<r2>"]
    assert all(len(b["box"]) == 4 for b in boxes)
    WebDriverWait(browser, ANSWER_S).until(lambda d: _image_loaded(d, "#output-image img"))
