"""Load on loopback: concurrent users querying and writing history through a real server
(bounded: a few seconds); no history row may be lost or duplicated, the server stays up, and
overload is answered 503, never stored and never a crash. Figures: `benchmarks/web_load.py`."""

from __future__ import annotations

import sqlite3

import pytest

pytest.importorskip("fastapi", reason="the web extra is not installed (pip install -e '.[web]')")
pytest.importorskip("uvicorn", reason="the web extra is not installed")
pytest.importorskip("httpx", reason="httpx is not installed (pip install -e '.[webtest]')")

from benchmarks.web_load import run_load, serve_in_thread  # noqa: E402
from sb3dr_jax.serving.web.app import Settings, create_app  # noqa: E402


@pytest.mark.slow
def test_concurrent_users_lose_no_history(web_export, tmp_path):
    db = tmp_path / "web.sqlite"
    # A short queue, so that 6 users overload it and some queries are turned away.
    settings = Settings(export_dir=web_export, db_path=str(db), workers=1, max_waiting=2)
    base, stop = serve_in_thread(create_app(settings))
    try:
        r = run_load(base, users=6, seconds=4.0, max_queries=40)
    finally:
        stop()
    assert r["server_up"] and r["other_status"] == [], r
    assert r["queries_ok"] > 0, r
    assert r["lost"] == 0 and r["duplicated"] == 0 and r["unexpected"] == 0, r
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT COUNT(*), COUNT(DISTINCT public_id) FROM queries").fetchone()
    assert rows == (r["queries_ok"], r["queries_ok"])  # one row per answered query
