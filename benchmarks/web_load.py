"""Load test of the web retrieval system on loopback: N concurrent users, each registered and
logged in, send sketch queries (stored in their history) for a fixed time; then every user's
history is read back and compared with the query ids the server answered.

    python benchmarks/web_load.py [--export workdirs/distill/export] [--users 8] [--seconds 20]

Writes `benchmarks/results/web_load.json`: query latency p50/p99 (client side, ms), throughput
(queries/s), counts of 200/503/other answers, and the history check (lost, duplicated rows).
The server runs in this process (uvicorn on 127.0.0.1, a free port) with a fresh database.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import pathlib
import secrets
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def serve_in_thread(app, host: str = "127.0.0.1"):
    """Runs an ASGI app under uvicorn in a daemon thread on a free port.

    Args:
      app: the ASGI app.
      host: the address (loopback by default).

    Returns:
      (base URL, stop()): `stop` shuts the server down and joins the thread.
    """
    import uvicorn

    srv = uvicorn.Server(uvicorn.Config(app, host=host, port=0, log_level="warning"))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    deadline = time.time() + 60
    while not srv.started:
        if time.time() > deadline or not t.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    port = srv.servers[0].sockets[0].getsockname()[1]

    def stop():
        srv.should_exit = True
        t.join(10)

    return f"http://{host}:{port}", stop


def sketches(n: int, seed: int = 0) -> list[bytes]:
    """`n` different PNG drawings (random rectangles and lines, dark on white)."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        im = Image.new("L", (256, 256), 255)
        d = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(2, 6))):
            x0, y0, x1, y1 = (int(v) for v in rng.integers(20, 236, 4))
            d.line([(x0, y0), (x1, y1)], fill=0, width=int(rng.integers(2, 7)))
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


async def _register(c, name: str) -> dict:
    """Registers `name` on client `c`; returns the CSRF header for its session."""
    csrf = (await c.get("/api/session")).json()["csrf"]
    r = await c.post(
        "/api/register",
        json={"username": name, "password": "load-test-password"},
        headers={"X-CSRF-Token": csrf},
    )
    r.raise_for_status()
    return {"X-CSRF-Token": r.json()["csrf"]}


async def _user(c, h: dict, i: int, deadline: float, max_queries: int, pngs, rec: dict) -> None:
    """One user's timed phase, then the read-back of its whole history."""
    ids, n = [], 0
    while time.perf_counter() < deadline and n < max_queries:
        png = pngs[(i * 7 + n) % len(pngs)]
        t0 = time.perf_counter()
        r = await c.post(
            "/api/query?k=10", files={"sketch": ("s.png", png, "image/png")}, headers=h
        )
        ms = (time.perf_counter() - t0) * 1000.0
        rec["status"].append(r.status_code)
        if r.status_code == 200:
            rec["latency_ms"].append(ms)
            ids.append(r.json()["history_id"])
        elif r.status_code == 503:
            await asyncio.sleep(0.05)  # the server asked us to back off
        n += 1
    rec["query_end"] = max(rec.get("query_end", 0.0), time.perf_counter())
    stored, offset = [], 0
    while True:
        page = (await c.get(f"/api/history?limit=200&offset={offset}")).json()
        stored += [x["id"] for x in page["items"]]
        offset += 200
        if offset >= page["total"]:
            break
    rec["users"].append({"answered": ids, "stored": stored})


def run_load(base: str, users: int, seconds: float, max_queries: int = 10**9) -> dict:
    """Drives `users` concurrent users against a running server.

    Args:
      base: the server's base URL.
      users: concurrent users (each registers an account of its own).
      seconds: how long the users keep querying.
      max_queries: a cap on each user's queries.

    Returns:
      {"users", "seconds", "queries_ok", "busy_503", "other_status", "p50_ms", "p99_ms",
       "throughput_qps", "lost", "duplicated", "server_up"}.
    """
    import httpx
    import numpy as np

    pngs = sketches(16)
    rec: dict = {"status": [], "latency_ms": [], "users": []}

    async def main():
        clients = [httpx.AsyncClient(base_url=base, timeout=60) for _ in range(users)]
        try:
            # Accounts first (argon2 hashing is slow on purpose), then the timed phase.
            tag = secrets.token_hex(3)  # fresh names: the database may hold an earlier run's
            headers = await asyncio.gather(
                *(_register(c, f"load{tag}_{i:03d}") for i, c in enumerate(clients))
            )
            t0 = time.perf_counter()
            await asyncio.gather(
                *(
                    _user(c, h, i, t0 + seconds, max_queries, pngs, rec)
                    for i, (c, h) in enumerate(zip(clients, headers))
                )
            )
            return rec["query_end"] - t0  # the timed phase, without the read-back
        finally:
            for c in clients:
                await c.aclose()

    wall = asyncio.run(main())
    lost = sum(len(set(u["answered"]) - set(u["stored"])) for u in rec["users"])
    dup = sum(len(u["stored"]) - len(set(u["stored"])) for u in rec["users"])
    extra = sum(len(set(u["stored"]) - set(u["answered"])) for u in rec["users"])
    lat = np.asarray(rec["latency_ms"] or [np.nan])
    status = rec["status"]
    try:
        up = httpx.get(base + "/api/health", timeout=10).json()["status"] == "ok"
    except httpx.HTTPError:
        up = False
    return {
        "users": users,
        "seconds": round(wall, 2),
        "queries_ok": status.count(200),
        "busy_503": status.count(503),
        "other_status": sorted({s for s in status if s not in (200, 503)}),
        "p50_ms": round(float(np.percentile(lat, 50)), 1),
        "p99_ms": round(float(np.percentile(lat, 99)), 1),
        "throughput_qps": round(status.count(200) / wall, 2),
        "lost": lost,
        "duplicated": dup,
        "unexpected": extra,
        "server_up": up,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--export", default=str(ROOT / "workdirs/distill/export"))
    p.add_argument("--users", type=int, default=8)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/web_load.json"))
    a = p.parse_args()
    from sb3dr_jax.serving.web.app import Settings, create_app

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            export_dir=a.export,
            db_path=f"{tmp}/web.sqlite",
            workers=a.workers,
            registrations=a.users + 10,
        )
        app = create_app(settings)
        base, stop = serve_in_thread(app)
        try:
            result = run_load(base, a.users, a.seconds)
        finally:
            stop()
    import jax

    result.update(
        export=os.path.relpath(a.export, ROOT),
        export_id=app.state.export_id,
        workers=a.workers,
        max_waiting=settings.max_waiting,
        backend=jax.default_backend(),
        measured=time.strftime("%Y-%m-%dT%H:%M:%S"),
    )
    pathlib.Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
