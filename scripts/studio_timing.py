"""Time the studio: the page within 10 s of the command, the first video of the shipped model
within 5 s of the click (its own setting: 16 frames, DDPM 25 steps).

    OMP_NUM_THREADS=2 .venv/bin/python scripts/studio_timing.py [--clicks 3] [--wait-warm] \
        [--sampler NAME --steps N]

Starts ``python -m videofusion.studio`` on a free port, opens it in Debian's chromium through
Playwright, and prints seconds from the command to the page, to the Generate button being
enabled (the model loaded and run once), then from each click to the video. The first click
comes as soon as the button is enabled, as a user's would; ``--wait-warm`` waits 30 s more, so
that nothing left of the start-up shares the cores. ``--sampler`` and ``--steps`` set the page's
sampler and step count before the first click (default: the model's own).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

from videofusion.studio import free_port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clicks", type=int, default=3)
    parser.add_argument("--wait-warm", action="store_true")
    parser.add_argument("--sampler", help="one of the page's samplers, e.g. unipc")
    parser.add_argument("--steps", type=int)
    args = parser.parse_args()
    from playwright.sync_api import expect, sync_playwright

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    start = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "videofusion.studio", "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                time.sleep(0.1)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"),
                                        headless=True, args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(url)
            page.locator("#generate").wait_for()
            print(f"page shown {time.perf_counter() - start:.1f} s after the command")
            expect(page.locator("#generate")).to_be_enabled(timeout=120_000)
            print(f"Generate enabled (the model loaded and run once) "
                  f"{time.perf_counter() - start:.1f} s after the command")
            if args.wait_warm:
                time.sleep(30)  # the machine settles after the warm-up
            page.locator("#class_label input").click()
            page.get_by_role("option", name="3", exact=True).click()
            if args.sampler:
                page.locator("#sampler input").click()
                page.get_by_role("option", name=args.sampler, exact=True).click()
            if args.steps:
                box = page.locator("#steps input").first
                box.fill(str(args.steps))
                box.press("Tab")
            for click in range(args.clicks):
                before = page.locator("#status").inner_text()
                t0 = time.perf_counter()
                page.locator("#generate").click()
                page.wait_for_function(
                    "b => { const t = document.querySelector('#status').innerText;"
                    " return t !== b && t.includes('Generated'); }", arg=before, timeout=300_000)
                page.locator("#video video").wait_for()
                print(f"click {click + 1}: video in the page {time.perf_counter() - t0:.1f} s "
                      f"after the click ({page.locator('#status').inner_text()})")
            browser.close()
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
