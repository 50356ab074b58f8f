"""Small Selenium helpers for the dashboard tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
WAIT_S = 20  # an upper bound for the page to reach a state, never a speed assertion


def wait_for(driver: Any, condition: Callable[[Any], T]) -> T:
    from selenium.webdriver.support.ui import WebDriverWait  # lazily: skip, not crash, without it

    return WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(condition)


def sign_in(driver: Any, base: str, token: str, *, to: str = "/ui/fleet") -> None:
    driver.delete_all_cookies()
    driver.get(f"{base}/ui/login?token={token}&next={to}")
    wait_for(driver, lambda d: d.find_elements("id", "scope"))


# The live fragments replace their content every few seconds, so a WebElement found a
# moment ago may be stale: read the DOM in one script call instead (atomic in the page).


def text(driver: Any, css: str) -> str:
    value = driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.innerText : null;", css
    )
    assert value is not None, f"nothing matches {css!r} on {driver.current_url}"
    return str(value)


def texts(driver: Any, css: str) -> list[str]:
    return list(
        driver.execute_script(
            "return [...document.querySelectorAll(arguments[0])].map(e => e.innerText);", css
        )
    )


def attrs(driver: Any, css: str, name: str) -> list[str | None]:
    return list(
        driver.execute_script(
            "return [...document.querySelectorAll(arguments[0])]"
            ".map(e => e.getAttribute(arguments[1]));",
            css,
            name,
        )
    )


def count(driver: Any, css: str) -> int:
    return int(driver.execute_script("return document.querySelectorAll(arguments[0]).length;", css))


def click(driver: Any, css: str) -> None:
    """Click through a refresh that may replace the element between find and click."""
    from selenium.common.exceptions import StaleElementReferenceException

    for attempt in range(5):
        try:
            driver.find_element("css selector", css).click()
            return
        except StaleElementReferenceException:
            if attempt == 4:
                raise


def mark_page(driver: Any) -> None:
    """Tag the current document so a test can prove a change arrived without a reload."""
    driver.execute_script("window.__no_reload = true;")


def not_reloaded(driver: Any) -> bool:
    return bool(driver.execute_script("return window.__no_reload === true;"))


def screenshot(driver: Any, directory: Path, name: str) -> Path:
    height = driver.execute_script("return document.documentElement.scrollHeight;")
    driver.set_window_size(1366, max(800, min(int(height) + 40, 4000)))
    path = directory / f"{name}.png"
    driver.save_screenshot(str(path))
    driver.set_window_size(1366, 1000)
    return path
