"""The report page as a real browser shows it: headless Chromium measures it and takes
its screenshot at a given width.

Guarantee: a page measured wider than ``width_px`` overflows the window; no Chromium on
PATH, or one that fails, is a ``FedshieldError`` that says what to install or do instead.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from fedshield.common.errors import FedshieldError

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
PAGE_WIDTH_PX = 1280


def find_browser() -> str | None:
    """A headless-capable Chromium on PATH (Debian: ``apt-get install chromium``)."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


_HEADLESS_FLAGS = (
    "--headless",
    "--no-sandbox",  # containers run it as root; the page is the report we just wrote
    "--disable-gpu",
    "--hide-scrollbars",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--virtual-time-budget=5000",
)
_PROBE = (
    "<script>window.addEventListener('load',()=>{const d=document.documentElement;"
    "document.body.setAttribute('data-fedshield-size',d.scrollWidth+'x'+d.scrollHeight)})"
    "</script>"
)
_SIZE = re.compile(r'data-fedshield-size="(\d+)x(\d+)"')


def measure_page(html_path: Path, width_px: int = PAGE_WIDTH_PX) -> tuple[int, int]:
    """(scroll width, scroll height) of the page in headless Chromium ``width_px`` wide:
    a scroll width above ``width_px`` means something overflows the window."""
    browser = _browser_or_fail(html_path, width_px)
    probe = html_path.with_name(f".{html_path.stem}-measure.html")
    probe.write_text(
        html_path.read_text(encoding="utf-8").replace("</body>", _PROBE + "</body>"),
        encoding="utf-8",
    )
    try:
        proc = _run_browser(
            [browser, *_HEADLESS_FLAGS, f"--window-size={width_px},900", "--dump-dom", probe]
        )
    finally:
        probe.unlink(missing_ok=True)
    found = _SIZE.search(proc.stdout)
    if found is None:
        raise FedshieldError(
            f"{browser} rendered {html_path} but reported no page size: {proc.stderr[-500:]}"
        )
    return int(found.group(1)), int(found.group(2))


def screenshot(html_path: Path, png_path: Path, width_px: int = PAGE_WIDTH_PX) -> Path:
    """Render ``html_path`` in headless Chromium ``width_px`` wide, the whole page, to a PNG."""
    browser = _browser_or_fail(html_path, width_px)
    _, height = measure_page(html_path, width_px)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    png_path.unlink(missing_ok=True)
    _run_browser(
        [
            browser,
            *_HEADLESS_FLAGS,
            f"--window-size={width_px},{min(height, 30000)}",
            f"--screenshot={png_path.resolve()}",
            html_path,
        ]
    )
    if not png_path.exists():
        raise FedshieldError(f"{browser} wrote no screenshot of {html_path} to {png_path}")
    return png_path


def _browser_or_fail(html_path: Path, width_px: int) -> str:
    browser = find_browser()
    if browser is None:
        raise FedshieldError(
            f"no Chromium on PATH (looked for {', '.join(BROWSERS)}); install one (Debian: "
            f"apt-get install chromium) or open {html_path} in a browser {width_px} px wide"
        )
    return browser


def _run_browser(command: list) -> subprocess.CompletedProcess:
    args = [str(c) if not isinstance(c, Path) else c.resolve().as_uri() for c in command]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise FedshieldError(
            f"{args[0]} failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}"
        )
    return proc
