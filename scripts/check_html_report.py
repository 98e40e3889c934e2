#!/usr/bin/env python
"""Render a run's report.html in headless Chromium and fail if any image does not decode.

    python scripts/check_html_report.py RUN_DIR [--chromium PATH] [--write]

The page is rendered from a copy in an empty temporary folder, so an image that still points
at a file next to it (not inlined) shows up as broken too. The page's own load script writes
``data-images`` / ``data-broken-images`` onto <body>; this reads them off the dumped DOM.
Exit status: 0 all images decode, 1 broken images or no counts, 2 no Chromium binary.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPORT_HTML = "report.html"  # fedlora.outputs.REPORT_HTML, without importing fedlora
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome", "headless_shell")


class HtmlCheckError(RuntimeError):
    """The page could not be rendered or did not report its image counts."""


def find_chromium(explicit: str | None = None) -> str | None:
    """``explicit``, else $CHROMIUM, else the first Chromium-like binary on PATH."""
    for name in [explicit] if explicit else [os.environ.get("CHROMIUM", ""), *CANDIDATES]:
        if not name:
            continue
        found = shutil.which(name)
        if found:
            return found
    return None


def check_html(path: str | Path, chromium: str, budget_ms: int = 10_000, timeout_s: float = 120) -> tuple[int, int]:
    """(images on the page, images that failed to decode) as Chromium's load event saw them."""
    src = Path(path)
    if not src.is_file():
        raise HtmlCheckError(f"{src} does not exist")
    with tempfile.TemporaryDirectory(prefix="check_html_") as tmp:
        page = Path(tmp) / "page" / src.name
        page.parent.mkdir()
        shutil.copyfile(src, page)  # alone: relative references cannot resolve
        cmd = [
            chromium,
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-extensions",
            f"--user-data-dir={Path(tmp) / 'profile'}",
            "--host-resolver-rules=MAP * ~NOTFOUND",  # a network reference fails instead of loading
            f"--virtual-time-budget={budget_ms}",
            "--dump-dom",
            page.as_uri(),
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as err:
            raise HtmlCheckError(f"chromium did not finish within {timeout_s:.0f} s") from err
    body = re.search(r"<body\b[^>]*>", proc.stdout)
    if body is None:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise HtmlCheckError(f"chromium (exit {proc.returncode}) dumped no <body>; stderr ends:\n{tail}")
    attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', body.group(0)))
    if "data-images" not in attrs or "data-broken-images" not in attrs:
        raise HtmlCheckError(
            f"{src}: <body> has no data-images/data-broken-images: the page's load script did not run "
            "(not written by fedlora.reports, or the load event never fired)"
        )
    return int(attrs["data-images"]), int(attrs["data-broken-images"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help=f"a run folder (its {REPORT_HTML} is checked) or an HTML file")
    parser.add_argument("--chromium", help="Chromium/Chrome binary (default: $CHROMIUM, then PATH)")
    parser.add_argument("--write", action="store_true", help=f"(re)write {REPORT_HTML} first (imports fedlora)")
    parser.add_argument("--budget-ms", type=int, default=10_000, help="Chromium virtual-time budget")
    args = parser.parse_args(argv)

    target = Path(args.run_dir)
    if args.write:
        from fedlora.reports import write_html_report

        target = write_html_report(target)
    elif target.is_dir():
        target = target / REPORT_HTML
    if not target.is_file():
        print(f"error: {target} does not exist (rerun with --write to create it)", file=sys.stderr)
        return 1
    chromium = find_chromium(args.chromium)
    if chromium is None:
        wanted = args.chromium or f"any of {', '.join(CANDIDATES)} (or $CHROMIUM)"
        print(
            f"error: no Chromium binary found: {wanted}; install one (Debian: apt-get install chromium) "
            "or pass --chromium PATH",
            file=sys.stderr,
        )
        return 2
    started = time.perf_counter()
    try:
        images, broken = check_html(target, chromium, budget_ms=args.budget_ms)
    except HtmlCheckError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    took = time.perf_counter() - started
    if broken:
        print(f"FAIL {target}: {broken} of {images} images are broken ({took:.1f} s render)", file=sys.stderr)
        return 1
    print(f"ok {target}: {images} images, none broken ({took:.1f} s render, {chromium})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
