from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest

from tests.fixtures.services import MISSING

pytest_plugins = [
    "tests.fixtures.services",
    "tests.fixtures.brokers",
    "tests.fixtures.bundles",
    "tests.fixtures.hub_procs",
    "tests.fixtures.s3",
]

# what to install for a skip whose reason names it (first match wins)
INSTALL_HINTS = (
    ("chromium", "apt-get install -y chromium chromium-driver"),
    ("mosquitto", "apt-get install -y mosquitto"),
    (
        "postgresql",
        "apt-get install -y postgresql && service postgresql start (trust auth on 127.0.0.1, "
        "or point EDGELOOP_TEST_PG_ADMIN_URL at a server)",
    ),
    ("litert", "pip install -e '.[tflite]'"),
    ("selenium", "pip install -e '.[dev]'"),
    ("amqtt", "pip install -e '.[dev]'"),
)


def _reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _missing(reason: str) -> bool:
    return MISSING in reason or "is not installed" in reason or "not installed (" in reason


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> Iterator[None]:
    """Say loudly, last, what was NOT tested because a service or tool is missing here, and
    how to install it (CI=true fails instead of skipping, see tests/fixtures/services.py)."""
    yield  # after pytest's own summaries (short test summary, durations)
    skipped = terminalreporter.stats.get("skipped", [])
    counts = Counter(
        _reason(r).replace(MISSING, "").strip() for r in skipped if _missing(_reason(r))
    )
    if not counts:
        return
    tr = terminalreporter
    tr.section("NOT TESTED: missing services or tools", sep="!", red=True, bold=True)
    for reason, n in counts.most_common():
        hint = next((h for key, h in INSTALL_HINTS if key in reason.lower()), "")
        tr.write_line(f"{n:4d} skipped: {reason}", yellow=True, bold=True)
        if hint:
            tr.write_line(f"      install: {hint}")
    tr.write_line(
        f"{sum(counts.values())} tests did not run; install the above and run `make test` again "
        "(CI=true fails instead of skipping)",
        red=True,
        bold=True,
    )
