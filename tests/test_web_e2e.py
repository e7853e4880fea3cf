"""The web front end in a real headless Chromium (Debian's `chromium`, driven by Playwright's
Python API; no browser download): drawing, searching, the 3D viewer, benchmark sketches,
accounts, history and the boundary between two users. Each page's screenshot is written to
`$SB3DR_WEB_ARTIFACTS` (default: the test's tmp folder)."""

from __future__ import annotations

import io
import os
import pathlib
import shutil

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the web extra is not installed (pip install -e '.[web]')")
pytest.importorskip("uvicorn", reason="the web extra is not installed")
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install -e '.[webtest]')"
)

CHROMIUM = os.environ.get("SB3DR_CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
WEB = pathlib.Path(__file__).resolve().parents[1] / "sb3dr_jax" / "serving" / "web"
MISSING = [
    why
    for bad, why in [
        (not os.path.exists(CHROMIUM), f"no Chromium at {CHROMIUM}: apt-get install -y chromium"),
        (
            not (WEB / "node_modules" / "three" / "build" / "three.module.js").exists(),
            "three.js not installed: npm ci --prefix sb3dr_jax/serving/web",
        ),
    ]
    if bad
]
if MISSING and os.environ.get("SB3DR_REQUIRE_BROWSER") == "1":  # CI: fail, never skip
    raise RuntimeError("; ".join(MISSING))
pytestmark = [pytest.mark.slow, pytest.mark.skipif(bool(MISSING), reason="; ".join(MISSING))]
# Software WebGL: the headless machine has no GPU.
ARGS = ["--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"]


@pytest.fixture(scope="module")
def server(web_export, tmp_path_factory):
    """The app under uvicorn on 127.0.0.1 (a free port), in a thread of this process."""
    from benchmarks.web_load import serve_in_thread
    from sb3dr_jax.serving.web.app import Settings, create_app

    db = tmp_path_factory.mktemp("e2e") / "web.sqlite"
    base, stop = serve_in_thread(create_app(Settings(export_dir=web_export, db_path=str(db))))
    yield base
    stop()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> pathlib.Path:
    d = os.environ.get("SB3DR_WEB_ARTIFACTS")
    p = pathlib.Path(d) if d else tmp_path_factory.mktemp("screenshots")
    p.mkdir(parents=True, exist_ok=True)
    return p


def ink_pixels(page) -> int:
    """Dark pixels on the sketch canvas."""
    return page.evaluate(
        """() => { const c = document.getElementById('sketch');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] < 128) n++; return n; }"""
    )


def image_loaded(locator, seconds: float = 10.0) -> bool:
    """Whether the <img> at `locator` has loaded, polled from here for up to `seconds` (an
    image starts loading when its element is inserted; the page's CSP forbids
    wait_for_function's eval)."""
    for _ in range(int(seconds / 0.2)):
        if locator.evaluate("img => img.complete && img.naturalWidth > 0"):
            return True
        locator.page.wait_for_timeout(200)
    return False


def sign_in(page, user: str, password: str, button: str) -> None:
    """Opens the login form, fills it and presses `button` (#register or #login)."""
    page.click("#nav-login")
    page.fill("#username", user)
    page.fill("#password", password)
    page.click(button)
    page.wait_for_selector(f"#who:has-text('{user}')")


def draw(page, strokes) -> None:
    """Draws polylines (canvas fractions) with real mouse events."""
    box = page.locator("#sketch").bounding_box()
    for stroke in strokes:
        pts = [(box["x"] + x * box["width"], box["y"] + y * box["height"]) for x, y in stroke]
        page.mouse.move(*pts[0])
        page.mouse.down()
        for pt in pts[1:]:
            page.mouse.move(*pt, steps=4)
        page.mouse.up()


def pen_stroke(page, pressure: float) -> int:
    """Dispatches a pen stroke with the given pressure; returns the ink pixels it added."""
    before = ink_pixels(page)
    page.evaluate(
        """(p) => { const c = document.getElementById('sketch'); const r = c.getBoundingClientRect();
        const ev = (type, f) => c.dispatchEvent(new PointerEvent(type, {pointerId: 7,
          pointerType: 'pen', pressure: p, button: 0, buttons: 1, bubbles: true,
          clientX: r.left + r.width * f, clientY: r.top + r.height * 0.1}));
        ev('pointerdown', 0.1); for (let i = 1; i <= 20; i++) ev('pointermove', 0.1 + i * 0.04);
        ev('pointerup', 0.9); }""",
        pressure,
    )
    return ink_pixels(page) - before


HOUSE = [
    [(0.2, 0.8), (0.2, 0.4), (0.8, 0.4), (0.8, 0.8), (0.2, 0.8)],
    [(0.15, 0.45), (0.5, 0.15), (0.85, 0.45)],
]


def open_app(browser, server, **ctx):
    context = browser.new_context(**ctx)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server + "/")
    page.wait_for_selector("body[data-ready='1']")
    return context, page, errors


def test_draw_search_view_3d_and_pick_a_benchmark_sketch(browser, server, artifacts):
    context, page, errors = open_app(browser, server, viewport={"width": 1280, "height": 860})
    draw(page, HOUSE)
    drawn = ink_pixels(page)
    assert drawn > 500
    draw(page, [[(0.4, 0.8), (0.4, 0.6), (0.55, 0.6), (0.55, 0.8)]])
    assert ink_pixels(page) > drawn
    page.keyboard.press("Control+z")  # undo the door (a redraw: antialiasing may move a pixel)
    assert abs(ink_pixels(page) - drawn) <= 0.02 * drawn
    # A pen: pressure sets the width (Pointer Events as a stylus sends them).
    heavy = pen_stroke(page, 1.0)
    page.keyboard.press("Control+z")
    light = pen_stroke(page, 0.1)
    page.keyboard.press("Control+z")
    assert heavy > 1.5 * light > 0, (heavy, light)
    page.click("#search")
    page.wait_for_selector("#results .card >> nth=11")
    cards = page.locator("#results .card")
    assert cards.count() == 12
    assert "ms" in page.inner_text("#query-time")
    assert image_loaded(cards.first.locator("img"))
    page.screenshot(path=str(artifacts / "search.png"))

    # The 3D viewer: an orbitable mesh, rendered by WebGL into a non-blank canvas.
    cards.first.click()
    page.wait_for_selector("#viewer[data-loaded]", timeout=30_000)
    page.wait_for_timeout(500)
    canvas = page.locator("#viewer-stage canvas")
    before = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("RGB"), np.int16)
    background = np.array([0xEE, 0xF1, 0xF5])
    covered = (np.abs(before - background).sum(-1) > 30).mean()
    assert covered > 0.02, f"viewer canvas is blank ({covered:.4f} of pixels drawn)"
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.8, box["y"] + box["height"] / 2, steps=8)
    page.mouse.up()
    page.wait_for_timeout(300)
    after = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("RGB"), np.int16)
    assert np.abs(after - before).sum(-1).astype(bool).mean() > 0.005  # orbiting moved it
    page.screenshot(path=str(artifacts / "viewer.png"))
    page.click("#viewer-reset")
    page.keyboard.press("Escape")
    assert not page.locator("#viewer").evaluate("d => d.open")

    # A benchmark sketch instead of a drawing.
    page.click("#bench summary")
    label = page.locator("#bench-class option").nth(1).inner_text()
    page.select_option("#bench-class", label)
    page.locator("#bench-grid button").first.click()
    page.wait_for_function("document.getElementById('query-time').textContent.includes('ms')")
    page.wait_for_selector("#results .card")
    assert page.locator("#bench-grid button").count() == 3  # 3 test sketches per smoke class
    # The picked sketch is shown on the canvas (drawn once its thumbnail has loaded).
    for _ in range(50):  # polled from here: the page's CSP forbids wait_for_function's eval
        if ink_pixels(page) > 100:
            break
        page.wait_for_timeout(200)
    assert ink_pixels(page) > 100
    page.screenshot(path=str(artifacts / "benchmark.png"))

    # Phone width: one column, nothing wider than the screen.
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(200)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    page.screenshot(path=str(artifacts / "phone.png"), full_page=True)
    assert not errors, errors
    context.close()


def test_accounts_history_and_a_second_user(browser, server, artifacts):
    context, page, errors = open_app(browser, server, viewport={"width": 1100, "height": 800})
    page.click("#nav-login")
    page.fill("#username", "alice")
    page.fill("#password", "correct horse")
    page.screenshot(path=str(artifacts / "login.png"))
    page.click("#register")
    page.wait_for_selector("#who:has-text('alice')")
    draw(page, HOUSE)
    page.click("#search")
    page.wait_for_selector("#status:has-text('Saved to your history')")
    page.screenshot(path=str(artifacts / "logged_in_search.png"))
    page.click("#nav-history")
    item = page.locator(".history-item")
    item.first.wait_for()
    assert item.count() == 1
    query_id = item.first.get_attribute("data-query-id")
    page.screenshot(path=str(artifacts / "history.png"))
    item.first.click()
    page.wait_for_selector("#history-results .card >> nth=11")
    assert image_loaded(page.locator("#history-sketch"))
    page.screenshot(path=str(artifacts / "history_detail.png"))

    # A second user sees none of it, not even by id.
    other, page2, errors2 = open_app(browser, server)
    sign_in(page2, "bob", "battery staple", "#register")
    page2.click("#nav-history")
    page2.wait_for_selector("#history-empty:not([hidden])")
    assert page2.locator(".history-item").count() == 0
    status = page2.evaluate(f"fetch('/api/history/{query_id}').then(r => r.status)")
    assert status == 404
    # Logging in again (after logging out) as alice still finds it; then she deletes it.
    page.click("#logout")
    page.wait_for_selector("#nav-login:not([hidden])")
    sign_in(page, "alice", "correct horse", "#login")
    page.click("#nav-history")
    page.locator(f".history-item[data-query-id='{query_id}']").click()
    page.click("#history-delete")
    page.wait_for_selector("#history-empty:not([hidden])")
    assert page.locator(".history-item").count() == 0
    assert not errors and not errors2, errors + errors2
    other.close()
    context.close()
