"""The playground page driven in headless Chromium (selenium) for tests and screenshots; the server knows nothing of it.

scripts/screenshot.py makes the README's picture with it; tests/test_serve.py drives the page with it.

Needs the system's Chromium and chromedriver (Debian: apt-get install chromium chromium-driver) and selenium
(pip install -e '.[test]'), imported only when a browser starts. Nothing is downloaded.
"""

import shutil
import time
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
DRIVERS = ("chromedriver",)


def find_browser() -> tuple[str, str]:
    """(browser, driver) executables, or RuntimeError saying what to install."""
    browser = next(filter(None, map(shutil.which, BROWSERS)), None)
    driver = next(filter(None, map(shutil.which, DRIVERS)), None)
    if not browser or not driver:
        raise RuntimeError("headless Chromium is needed: install the system's chromium and chromedriver "
                           "(Debian: apt-get install -y chromium chromium-driver); missing: "
                           + ", ".join(n for n, p in (("chromium", browser), ("chromedriver", driver)) if not p))
    return browser, driver


def chrome(width: int = 1280, height: int = 860):
    """A headless Chromium driven by selenium through the system's chromedriver (no downloads)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = find_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run",
                "--disable-extensions", "--disable-background-networking", "--disable-sync",
                "--hide-scrollbars", f"--window-size={width},{height}"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def wait_for(condition, timeout: float = 30.0, what: str = "the page"):
    """Poll `condition()` until it returns something truthy; TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


def js(driver, script: str, *args):
    return driver.execute_script(script, *args)


def open_page(driver, url: str) -> None:
    """Load the page and wait until its form and every column's model details are there."""
    driver.get(url)
    wait_for(lambda: js(driver, "return document.body.dataset.ready === 'true'"), what="the page to start")
    wait_for(lambda: js(driver, """return [...document.querySelectorAll('.story .model-info dd')]
                                   .every(d => d.textContent !== 'loading…')"""), what="the model details")


def set_field(driver, element_id: str, value) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    field = driver.find_element(By.ID, element_id)
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(Keys.DELETE)
    if value != "":
        field.send_keys(str(value))


def story_states(driver) -> list[dict]:
    return js(driver, """return [...document.querySelectorAll('.story')].map(s => ({
        model: s.dataset.model, state: s.dataset.state, text: s.querySelector('.new-text').textContent,
        speed: s.querySelector('.speed').textContent}))""")


def write(driver, prompt: str, seed: int, max_tokens: int, timeout: float = 60.0) -> list[list[dict]]:
    """Type the prompt and settings, press Write, poll the columns until they stop writing; every poll's states."""
    set_field(driver, "prompt", prompt)
    return _press_write(driver, seed, max_tokens, timeout)


def ask(driver, request: str, seed: int, max_tokens: int, timeout: float = 60.0) -> list[list[dict]]:
    """Switch to Ask (a chat model must be chosen), type the request, then as `write`."""
    from selenium.webdriver.common.by import By

    wait_for(lambda: driver.find_element(By.ID, "mode-ask").is_enabled(), what="Ask to be offered")
    driver.find_element(By.ID, "mode-ask").click()
    set_field(driver, "request", request)
    return _press_write(driver, seed, max_tokens, timeout)


def _press_write(driver, seed: int, max_tokens: int, timeout: float) -> list[list[dict]]:
    from selenium.webdriver.common.by import By

    set_field(driver, "f-seed", seed)
    set_field(driver, "f-max_tokens", max_tokens)
    driver.find_element(By.ID, "write").click()
    polls = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = story_states(driver)
        polls.append(states)
        if len(polls) > 1 and all(s["state"] in ("done", "stopped", "error") for s in states):
            return polls
        time.sleep(0.01)
    raise TimeoutError("the stories did not finish")


def take(driver, url: str, out: Path, prompt: str, seed: int, max_tokens: int) -> Path:
    open_page(driver, url)
    write(driver, prompt, seed, max_tokens)
    js(driver, "document.activeElement.blur(); window.scrollTo(0, 0)")
    out.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(out))
    return out
