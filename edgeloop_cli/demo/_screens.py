"""A screenshot of the dashboard's rollout page, when a headless Chromium is installed."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

log = logging.getLogger("edgeloop.demo")
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def rollout_screenshot(*, hub_url: str, token: str, rollout_id: str, out: Path) -> Path | None:
    """Sign in to ``/ui`` with the admin token, open the rollout's page and save a PNG; None
    (with a log line) when selenium or Chromium is missing — the demo goes on without it."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()) or shutil.which("chromium") is None:
        log.info("no screenshot: chromium / chromium-driver not installed")
        return None
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        log.info("no screenshot: selenium not installed")
        return None
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_argument("--window-size=1366,1100")
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        target = f"/ui/rollouts/{rollout_id}"
        driver.get(f"{hub_url}/ui/login?token={token}&next={target}")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and rollout_id not in driver.page_source:
            time.sleep(0.2)
        time.sleep(1.0)  # let the live fragment fill in
        out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out))
        return out
    except Exception as exc:  # a screenshot is a nicety, never a reason to fail the demo
        log.warning("no screenshot: %s", exc)
        return None
    finally:
        driver.quit()
