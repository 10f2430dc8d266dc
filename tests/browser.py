"""Headless Chromium for the tests that need a real browser (CI installs it)."""

from __future__ import annotations

import os
from typing import Any

import pytest

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
BROWSER_MISSING = (
    "Debian chromium and chromium-driver are not installed "
    "(apt-get install chromium chromium-driver)"
)


def chrome() -> Any:
    """A headless Chromium driver; skips (or, under KEYTURN_REQUIRE_SERVICES=1, fails)
    the test where the browser is not installed."""
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        reason = BROWSER_MISSING
        if os.environ.get("KEYTURN_REQUIRE_SERVICES") == "1":
            pytest.fail(reason + " and KEYTURN_REQUIRE_SERVICES=1")
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-quic",
        "--no-first-run",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1200,1000",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    # An element looked up right after a click that navigates (a login form's
    # submit) may not be on the page yet: lookups wait for it, up to 10 s.
    driver.implicitly_wait(10)
    return driver
