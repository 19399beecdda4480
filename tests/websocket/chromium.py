"""Debian's chromium for the browser tests, driven by Playwright (never a
browser Playwright downloads)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")

ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def launch(playwright: Any) -> Any:
    """A headless chromium browser (close it when done)."""
    return playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
