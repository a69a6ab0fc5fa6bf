"""Screenshot a report page (``batcher report``'s HTML) as README shows it: the page opened from its
file in the system's headless Chromium (through Playwright, as the browser tests do), the top of it
at a laptop's window size, saved as a PNG. Past ``--max-kb`` the PNG is saved again with a 256-colour
palette (a page is mostly flat colour; photos in the thumbnails are what make it large).

    python scripts/screenshot_report.py OUT/report.html [-o docs/report.png] [--width 1280] [--height 960]

Needs Playwright (the ``[test]`` extra) and Chromium (Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="the report page (an .html file)")
    parser.add_argument("-o", "--out", type=Path, default=Path("docs/report.png"))
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=960)
    parser.add_argument("--max-kb", type=int, default=300, help="re-save with a palette past this size")
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"))
    args = parser.parse_args(argv)
    if not args.report.is_file():
        print(f"no such report: {args.report}", file=sys.stderr)
        return 2
    if not args.chromium:
        print("no Chromium found (Debian: apt-get install chromium; or --chromium PATH)", file=sys.stderr)
        return 2

    from playwright.sync_api import sync_playwright

    args.out.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, headless=True)
        page = browser.new_page(viewport={"width": args.width, "height": args.height})
        problems: list[str] = []
        page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}"))
        page.on("pageerror", lambda e: problems.append(f"uncaught: {e}"))
        page.goto(args.report.resolve().as_uri(), wait_until="load")
        page.screenshot(path=str(args.out))
        browser.close()
    for problem in problems:
        print(problem, file=sys.stderr)

    size = args.out.stat().st_size
    if size > args.max_kb * 1024:
        from PIL import Image

        with Image.open(args.out) as image:
            image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(
                args.out, optimize=True
            )
        size = args.out.stat().st_size
    print(f"{args.out}: {args.width}x{args.height}, {size / 1024:.0f} KB")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
