"""Writes the README's two screenshots of the web system (`docs/web_search.png`,
`docs/web_viewer.png`) from a live server on an export, in headless Chromium.

    python docs/make_web_screenshots.py [--export workdirs/distill/export] [--label chair]

Logs in a fresh user, picks the first test sketch of `--label` from the benchmark panel,
shows the results, then opens the second result in the 3D viewer and turns it a little.
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ARGS = ["--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--export", default=str(ROOT / "workdirs/distill/export"))
    p.add_argument("--label", default="chair")
    p.add_argument("--out", default=str(ROOT / "docs"))
    p.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    a = p.parse_args()
    from playwright.sync_api import sync_playwright

    from benchmarks.web_load import serve_in_thread
    from sb3dr_jax.serving.web.app import Settings, create_app

    out = pathlib.Path(a.out)
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        base, stop = serve_in_thread(create_app(Settings(a.export, db_path=f"{tmp}/w.sqlite")))
        try:
            browser = pw.chromium.launch(executable_path=a.chromium, args=ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.goto(base + "/#/login")
            page.wait_for_selector("body[data-ready='1']")
            page.fill("#username", "demo_user")
            page.fill("#password", "demo password")
            page.click("#register")
            page.wait_for_selector("#who:has-text('demo_user')")
            page.click("#bench summary")
            page.select_option("#bench-class", a.label)
            page.locator("#bench-grid button").first.click()
            page.wait_for_selector("#status:has-text('Saved')")
            page.wait_for_timeout(1000)
            page.screenshot(path=str(out / "web_search.png"))
            print(page.locator("#results .card .label").all_inner_texts())
            page.locator("#results .card").nth(1).click()
            page.wait_for_selector("#viewer[data-loaded]", timeout=30_000)
            page.wait_for_timeout(800)
            box = page.locator("#viewer-stage canvas").bounding_box()
            cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
            page.mouse.move(cx, cy)
            page.mouse.down()
            page.mouse.move(cx + 0.1 * box["width"], cy - 0.05 * box["height"], steps=6)
            page.mouse.up()
            page.wait_for_timeout(600)
            page.screenshot(path=str(out / "web_viewer.png"))
            browser.close()
        finally:
            stop()


if __name__ == "__main__":
    main()
