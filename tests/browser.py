"""A real browser for the report's tests: headless Chromium (Debian's), as a user would open the page."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from rendezvous.tools.report import CHARTS

CHART_NAMES = [stem for stem, _, _ in CHARTS]
#: No network, no first-run work, no sandbox (tests run as root): what Chromium needs headless on this machine.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium; scripts/test does it as root)")
    return found


def rendered_charts(page: Path) -> set[str]:
    """The charts Chromium decoded when it loaded ``page``: the page writes their ids into body[data-rendered]
    on its load event, counting only images that are complete and have a width."""
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run([chromium(), *FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=10000",
                               "--dump-dom", page.resolve().as_uri()], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r'<body[^>]*data-rendered="([^"]*)"', done.stdout)
    assert found, f"the page's load handler did not run: {done.stdout[:500]}"
    return set(found.group(1).split())


def empty_charts(page: Path) -> list[str]:
    """Captions of the charts that had nothing to show (each says why)."""
    return re.findall(r"<figcaption>([^<]*\([^<]*\))</figcaption>", page.read_text())
