"""Pages in a real headless Chromium (Debian's chromium and chromium-driver,
driven by selenium): what a person does, clicked as a person would."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from authkit import send

from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as arrived
from selenium.webdriver.support.ui import WebDriverWait


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if not (shutil.which(chromium) and shutil.which(driver_path)):
        pytest.fail("chromium and chromium-driver are not installed: run scripts/test, "
                    "which installs them")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1000",
                "--disable-dev-shm-usage"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=webdriver.ChromeService(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def sign_in(driver: Any, base: str, rd: str) -> None:
    driver.delete_all_cookies()
    driver.get(f"{base}/_gateway/login?rd={rd}")
    driver.find_element(By.ID, "username").send_keys("alice")
    driver.find_element(By.ID, "password").send_keys("alice-pw")
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()


def wait_for(driver: Any, condition: Any) -> Any:
    """A click starts a navigation; what it leads to arrives a moment later."""
    return WebDriverWait(driver, 10).until(condition)


async def test_a_person_signs_out_another_device_on_the_sessions_page(
        upstream: Any, make_config: Any, gateway: Any, browser: Any) -> None:
    client = await gateway(make_config(str(upstream.make_url("/"))))
    base = f"http://{client.server.host}:{client.server.port}"
    other = await send(client, "POST", "/_gateway/api/login",
                       headers=[("User-Agent", "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like "
                                 "Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
                                 "Version/17.4 Mobile/15E148 Safari/604.1")],
                       json={"username": "alice", "password": "alice-pw"})
    other_token = other.set_cookies()["gateway_session"].split("=", 1)[1].split(";")[0]

    def click_through() -> str:
        sign_in(browser, base, "/_gateway/sessions")
        wait_for(browser, arrived.title_is("Your sessions"))
        cards = browser.find_elements(By.CSS_SELECTOR, "ul.sessions li")
        phone = next(c for c in cards if "Mobile Safari 17 on iOS 17" in c.text)
        assert "This device" not in phone.text
        phone.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        return wait_for(browser, arrived.presence_of_element_located(
            (By.CSS_SELECTOR, "[role=status]"))).text

    notice = await asyncio.to_thread(click_through)
    assert notice == "Signed out that session."
    r = await send(client, "GET", "/x", token=other_token)
    assert (r.status, r.json()["error"]) == (401, "SESSION_REVOKED")
    page = await asyncio.to_thread(lambda: browser.page_source)
    assert "Signed out from another device." in page       # listed as recently ended
    # The browser's own session is untouched.
    cookies = await asyncio.to_thread(browser.get_cookies)
    token = next(c["value"] for c in cookies if c["name"] == "gateway_session")
    agent = await asyncio.to_thread(browser.execute_script, "return navigator.userAgent")
    assert (await send(client, "GET", "/x", token=token,
                       headers=[("User-Agent", agent)])).status == 200
