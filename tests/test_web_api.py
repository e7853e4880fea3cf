"""The web API: every endpoint, each bad input, the boundary between two users, the schema."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import pathlib
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the web extra is not installed (pip install -e '.[web]')")
pytest.importorskip("sqlalchemy", reason="the web extra is not installed")
from fastapi.testclient import TestClient  # noqa: E402

from sb3dr_jax.serving.web import db as dbm  # noqa: E402
from sb3dr_jax.serving.web.app import Busy, ModelRunner, Settings, create_app  # noqa: E402


def png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def drawing(seed: int = 0, size: int = 200) -> bytes:
    """A dark-on-white PNG with a few random strokes."""
    rng = np.random.default_rng(seed)
    a = np.full((size, size), 255, np.uint8)
    for _ in range(4):
        y, x = rng.integers(20, size - 40, 2)
        a[y : y + rng.integers(5, 30), x : x + 4] = 0
        a[y : y + 4, x : x + rng.integers(5, 30)] = 0
    return png(a)


@pytest.fixture(scope="module")
def engine(web_export):
    from sb3dr_jax.serving.query import QueryEngine

    return QueryEngine.from_export(web_export)


def make_client(web_export, engine, tmp_path, **overrides) -> TestClient:
    s = Settings(export_dir=web_export, db_path=str(tmp_path / "web.sqlite"), warmup=False)
    for k, v in overrides.items():
        setattr(s, k, v)
    return TestClient(create_app(s, engine=engine), raise_server_exceptions=False)


@pytest.fixture
def client(web_export, engine, tmp_path):
    with make_client(web_export, engine, tmp_path) as c:
        yield c


def csrf(c: TestClient) -> dict:
    return {"X-CSRF-Token": c.get("/api/session").json()["csrf"]}


def query(c: TestClient, data: bytes, k: int = 5, headers=None):
    return c.post(
        f"/api/query?k={k}",
        files={"sketch": ("s.png", data, "image/png")},
        headers=csrf(c) if headers is None else headers,
    )


def register(c: TestClient, name: str, password: str = "correct horse"):
    r = c.post("/api/register", json={"username": name, "password": password}, headers=csrf(c))
    assert r.status_code == 201, r.text
    return r


def assert_error(r, status: int, contains: str = ""):
    assert r.status_code == status, r.text
    body = r.json()
    assert body["status"] == status and contains.lower() in body["error"].lower(), body
    assert "Traceback" not in r.text


def test_info_health_openapi(client, engine):
    info = client.get("/api/info").json()
    assert info["num_models"] == len(engine.index.model_ids) and info["web_assets"]
    assert info["sketch_splits"] == ["test"] and info["classes"] == engine.index.class_names
    assert client.get("/api/health").json()["status"] == "ok"
    paths = client.get("/api/openapi.json").json()["paths"]
    for p in [
        "/api/query",
        "/api/sketches",
        "/api/sketches/{split}/{sketch_id}.png",
        "/api/models/{model_id}",
        "/api/models/{model_id}/thumbnail.png",
        "/api/models/{model_id}/views.png",
        "/api/models/{model_id}/mesh.glb",
        "/api/history",
        "/api/history/{public_id}",
        "/api/history/{public_id}/sketch.png",
        "/api/register",
        "/api/login",
        "/api/logout",
        "/api/session",
    ]:
        assert p in paths, p
    assert set(paths["/api/query"]["post"]["requestBody"]["content"]) == {
        "multipart/form-data",
        "application/json",
    }
    page = client.get("/")
    assert page.status_code == 200 and "sketch" in page.text
    assert "script-src 'self' 'sha256-" in page.headers["content-security-policy"]
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/docs").status_code == 404  # the docs pages would load a CDN


def test_anonymous_query_ranks_like_the_engine(client, engine):
    data = drawing(1)
    r = query(client, data, k=5)
    assert r.status_code == 200, r.text
    body = r.json()
    expected = engine.query(data, k=5)
    assert [x["model_id"] for x in body["results"]] == [x["model_id"] for x in expected]
    np.testing.assert_allclose(
        [x["score"] for x in body["results"]], [x["score"] for x in expected], atol=1e-5
    )
    assert [x["rank"] for x in body["results"]] == [1, 2, 3, 4, 5]
    assert body["history_id"] is None and body["query_ms"] > 0 and body["source"] == "upload"
    thumb = client.get(body["results"][0]["thumbnail_url"])
    assert thumb.status_code == 200 and thumb.content.startswith(b"\x89PNG")
    # The same drawing as a canvas data URL, and a benchmark sketch by id.
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    r2 = client.post("/api/query?k=5", json={"image": url}, headers=csrf(client))
    assert r2.status_code == 200 and r2.json()["source"] == "canvas"
    assert [x["model_id"] for x in r2.json()["results"]] == [x["model_id"] for x in expected]
    sk = client.get("/api/sketches?split=test").json()["sketches"][0]
    r3 = client.post(
        "/api/query?k=3",
        json={"benchmark": {"split": "test", "id": sk["id"]}},
        headers=csrf(client),
    )
    assert r3.status_code == 200 and r3.json()["source"] == f"benchmark:test/{sk['id']}"
    png_bytes = client.get(sk["url"]).content
    assert [x["model_id"] for x in r3.json()["results"]] == [
        x["model_id"] for x in engine.query(png_bytes, k=3)
    ]


def test_bad_inputs_are_json_errors(web_export, engine, tmp_path):
    with make_client(web_export, engine, tmp_path, max_body_bytes=300_000) as c:
        h = csrf(c)
        assert_error(query(c, drawing(), headers={}), 403, "csrf")
        assert_error(query(c, drawing(), headers={"X-CSRF-Token": "wrong"}), 403, "csrf")
        cross = {**h, "Origin": "http://evil.example"}
        assert_error(query(c, drawing(), headers=cross), 403, "cross-origin")
        blank = png(np.full((100, 100), 255, np.uint8))
        assert_error(query(c, blank, headers=h), 422, "blank")
        assert_error(query(c, b"GIF89a" + b"\0" * 100, headers=h), 415, "PNG or JPEG")
        assert_error(query(c, b"hello", headers=h), 415)
        assert_error(query(c, b"\x89PNG\r\n\x1a\n" + b"\0" * 40, headers=h), 400, "header")
        huge = png(np.full((5000, 5000), 255, np.uint8))  # 25 Mpx, a few KB encoded
        assert len(huge) < 300_000
        assert_error(query(c, huge, headers=h), 413, "too large")
        assert_error(query(c, b"\x89PNG" + b"\0" * 400_000, headers=h), 413, "body")
        assert_error(query(c, drawing(), k=0, headers=h), 422, "k:")
        assert_error(query(c, drawing(), k=1000, headers=h), 422, "k:")
        r = c.post("/api/query", content=b"x", headers={**h, "Content-Type": "text/plain"})
        assert_error(r, 415)
        r = c.post("/api/query", files={"other": ("a", b"x")}, headers=h)
        assert_error(r, 400, "sketch")
        r = c.post("/api/query", json={"image": "data:image/png;base64,@@@"}, headers=h)
        assert_error(r, 400, "base64")
        r = c.post("/api/query", json={"image": "data:text/html;base64,AAAA"}, headers=h)
        assert_error(r, 415)
        r = c.post(
            "/api/query", content=b"{not json", headers={**h, "Content-Type": "application/json"}
        )
        assert_error(r, 422)
        r = c.post("/api/query", json={"benchmark": {"split": "test", "id": "nope"}}, headers=h)
        assert_error(r, 404)
        assert_error(c.get("/api/nothing"), 404)
        assert_error(c.get("/api/history"), 401)
        assert_error(c.post("/api/login", json={"username": "x"}, headers=h), 422)


def test_internal_errors_and_a_full_queue_answer_json(client, engine, monkeypatch):
    runner = client.app.state.runner
    runner.in_flight = runner.capacity  # as if that many queries were running
    try:
        r = query(client, drawing())
        assert_error(r, 503, "busy")
        assert r.headers["retry-after"] == "1"
    finally:
        runner.in_flight = 0

    def boom(*a, **k):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(engine, "query", boom)
    r = query(client, drawing())
    assert_error(r, 500, "internal server error")
    assert "secret" not in r.text
    assert client.get("/api/health").status_code == 200  # still up


def test_model_runner_admits_a_bounded_number():
    runner = ModelRunner(workers=1, max_waiting=1)
    release = threading.Event()

    async def main():
        slow = [asyncio.ensure_future(runner.run(release.wait)) for _ in range(2)]
        await asyncio.sleep(0.05)
        with pytest.raises(Busy):
            await runner.run(lambda: None)
        release.set()
        assert all(await asyncio.gather(*slow))
        assert await runner.run(lambda: 7) == 7  # admitted again once the queue drained

    asyncio.run(main())
    assert runner.rejected == 1 and runner.in_flight == 0
    runner.shutdown()


def test_models_and_sketches(client, engine):
    mid = engine.index.model_ids[0]
    m = client.get(f"/api/models/{mid}").json()
    assert m["label"] == engine.index.class_names[int(engine.index.labels[0])]
    assert m["num_views"] == 12
    assert client.get(m["thumbnail_url"]).content.startswith(b"\x89PNG")
    views = Image.open(io.BytesIO(client.get(m["views_url"]).content))
    assert views.width == 12 * views.height
    mesh = client.get(m["mesh_url"])
    assert mesh.headers["content-type"] == "model/gltf-binary" and mesh.content[:4] == b"glTF"
    assert_error(client.get("/api/models/nope"), 404)
    assert_error(client.get("/api/models/nope/mesh.glb"), 404)
    listing = client.get("/api/sketches", params={"split": "test"}).json()
    assert len(listing["sketches"]) == 12 and len(listing["classes"]) == 4
    one = listing["classes"][0]
    sub = client.get("/api/sketches", params={"split": "test", "label": one}).json()
    assert sub["sketches"] and all(s["label"] == one for s in sub["sketches"])
    img = client.get(sub["sketches"][0]["url"])
    assert img.status_code == 200 and Image.open(io.BytesIO(img.content)).size == (256, 256)
    assert_error(client.get("/api/sketches", params={"split": "train"}), 404)
    assert_error(client.get("/api/sketches", params={"label": "zebra"}), 404)
    assert_error(client.get("/api/sketches/test/nope.png"), 404)


def test_accounts_history_and_cookies(client):
    r = register(client, "Alice")
    cookies = r.headers.get_list("set-cookie")
    session_cookie = next(x for x in cookies if x.startswith("sb3dr_session="))
    assert "HttpOnly" in session_cookie and "SameSite=lax" in session_cookie
    assert "Secure" not in session_cookie  # plain HTTP here; see the HTTPS test
    assert r.json()["user"] == {"username": "alice"}
    assert client.get("/api/session").json()["user"] == {"username": "alice"}
    data = drawing(3)
    q = query(client, data, k=4).json()
    assert q["history_id"]
    hist = client.get("/api/history").json()
    assert hist["total"] == 1 and hist["items"][0]["id"] == q["history_id"]
    item = client.get(f"/api/history/{q['history_id']}").json()
    assert item["results"] == q["results"] and item["same_export"] and item["k"] == 4
    assert item["export_id"] == client.get("/api/info").json()["export_id"]
    assert client.get(item["sketch_url"]).content == data
    # Log out: the old session cookie stops working, and a new login works.
    old = client.cookies.get("sb3dr_session")
    client.post("/api/logout", headers=csrf(client))
    assert_error(client.get("/api/history"), 401)
    with TestClient(client.app, cookies={"sb3dr_session": old}) as stale:
        assert_error(stale.get("/api/history"), 401)
    r = client.post(
        "/api/login", json={"username": "ALICE", "password": "correct horse"}, headers=csrf(client)
    )
    assert r.status_code == 200
    # Delete needs the CSRF token; then the query is gone.
    assert_error(client.delete(f"/api/history/{q['history_id']}"), 403)
    assert client.delete(f"/api/history/{q['history_id']}", headers=csrf(client)).status_code == 200
    assert_error(client.get(f"/api/history/{q['history_id']}"), 404)
    assert client.get("/api/history").json()["total"] == 0
    # Account rules.
    h = csrf(client)
    r = client.post(
        "/api/register", json={"username": "alice", "password": "another one"}, headers=h
    )
    assert_error(r, 409, "taken")
    r = client.post("/api/register", json={"username": "bob", "password": "short"}, headers=h)
    assert_error(r, 422, "password")
    r = client.post("/api/register", json={"username": "b/b", "password": "long enough"}, headers=h)
    assert_error(r, 422, "username")


def test_two_users_cannot_see_each_others_history(web_export, engine, tmp_path):
    with make_client(web_export, engine, tmp_path) as a:
        register(a, "alice")
        qa = query(a, drawing(5)).json()["history_id"]
        with TestClient(a.app, raise_server_exceptions=False) as b:
            register(b, "bob")
            qb = query(b, drawing(6)).json()["history_id"]
            for path in (f"/api/history/{qa}", f"/api/history/{qa}/sketch.png"):
                assert_error(b.get(path), 404, "no such query")
            assert_error(b.delete(f"/api/history/{qa}", headers=csrf(b)), 404)
            assert [x["id"] for x in b.get("/api/history").json()["items"]] == [qb]
            # Guessing: ids are random; nothing else answers either.
            for guess in ("1", "0", qa[:-1] + ("A" if qa[-1] != "A" else "B"), "../1"):
                assert b.get(f"/api/history/{guess}").status_code == 404
        assert [x["id"] for x in a.get("/api/history").json()["items"]] == [qa]
        assert a.get(f"/api/history/{qa}").status_code == 200
        assert_error(a.get(f"/api/history/{qb}"), 404)


def test_login_is_rate_limited(web_export, engine, tmp_path):
    with make_client(web_export, engine, tmp_path, login_failures=3) as c:
        register(c, "carol")
        c.post("/api/logout", headers=csrf(c))
        h = csrf(c)
        for _ in range(3):
            r = c.post(
                "/api/login", json={"username": "carol", "password": "wrong pass"}, headers=h
            )
            assert_error(r, 401, "wrong username or password")
        r = c.post("/api/login", json={"username": "carol", "password": "correct horse"}, headers=h)
        assert_error(r, 429, "too many")
        assert int(r.headers["retry-after"]) >= 1
        # Unknown users fail the same way (no hint which names exist).
        r = c.post("/api/login", json={"username": "nobody", "password": "whatever1"}, headers=h)
        assert r.status_code in (401, 429)


def test_secure_cookies_behind_https(web_export, engine, tmp_path):
    s = Settings(export_dir=web_export, db_path=str(tmp_path / "w.sqlite"), warmup=False)
    with TestClient(create_app(s, engine=engine), base_url="https://testserver") as c:
        r = register(c, "dave")
        assert all("Secure" in x for x in r.headers.get_list("set-cookie"))


def test_schema_is_versioned_and_kept_on_reopen(tmp_path):
    path = tmp_path / "h.sqlite"
    eng, Db = dbm.open_database(path)
    assert dbm.orm_matches_schema(eng)
    with eng.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA user_version").scalar() == dbm.SCHEMA_VERSION
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    with Db.begin() as s:
        s.add(dbm.User(username="erin", password_hash="x", created_at=dbm.utcnow()))
    eng.dispose()
    eng, Db = dbm.open_database(path)  # migrations are not re-applied; rows are kept
    assert dbm.migrate(eng) == dbm.SCHEMA_VERSION
    with Db() as s:
        assert s.query(dbm.User).count() == 1
    with eng.begin() as conn:
        conn.exec_driver_sql(f"PRAGMA user_version={dbm.SCHEMA_VERSION + 1}")
    eng.dispose()
    with pytest.raises(dbm.SchemaError, match="newer"):
        dbm.open_database(path)


def test_export_carries_the_web_assets(web_export, smoke_builder):
    import trimesh

    from sb3dr_jax.serving.assets import WebAssets

    a = WebAssets.load(web_export)
    man = json.loads((a.root / "manifest.json").read_text())
    assert not man["skipped"]
    n_shapes = smoke_builder.info.splits["shapes"].num_examples
    assert len(a.models) == n_shapes and all(m.mesh and m.thumbnail for m in a.models.values())
    assert len(a.sketches) == smoke_builder.info.splits["sketch_test"].num_examples
    m = next(iter(a.models.values()))
    mesh = trimesh.load(a.file(m.mesh), file_type="glb", force="mesh")
    assert 0 < len(mesh.faces) <= man["mesh_faces"]
    assert np.linalg.norm(mesh.vertices, axis=1).max() <= 1.0 + 1e-4  # unit sphere
    thumb = np.asarray(Image.open(a.file(m.thumbnail)))
    assert thumb.shape[0] >= 128 and thumb.min() < 200 and thumb.max() == 255  # shape on paper
    sk = np.asarray(Image.open(a.file(a.sketches[0].file)))
    assert sk.shape == (256, 256) and np.median(sk) == 255 and sk.min() < 64  # ink on white


def test_serving_imports_neither_training_code_nor_trimesh_nor_tensorflow():
    code = (
        "import sys, sb3dr_jax.serving.web.app; "
        "bad = [m for m in sys.modules if m.startswith(('sb3dr_jax.train', 'sb3dr_jax.pretrain', "
        "'sb3dr_jax.distill', 'sb3dr_jax.evaluate', 'trimesh', 'tensorflow'))]; "
        "print(bad); assert not bad"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def test_serve_launcher_without_export_names_the_command(tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "launch.serve", "--export", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode != 0
    assert "python -m launch.distill" in p.stderr and "Traceback" not in p.stderr


def test_mesh_conversion_in_processes_writes_the_same_files(web_export, smoke_builder, tmp_path):
    import shutil

    from sb3dr_jax.data.web_assets import write_web_assets
    from sb3dr_jax.evals.index import RetrievalIndex

    shutil.copytree(web_export, tmp_path / "e")
    index = RetrievalIndex.load(tmp_path / "e")
    summary = write_web_assets(
        tmp_path / "e", smoke_builder, index, source_root=smoke_builder.source_dir, workers=2
    )
    assert summary["meshes"] == len(index.model_ids) and not summary["skipped"]
    for i in range(len(index.model_ids)):
        a = (tmp_path / "e" / "web" / "meshes" / f"{i}.glb").read_bytes()
        assert a == (pathlib.Path(web_export) / "web" / "meshes" / f"{i}.glb").read_bytes()
    # A missing source folder: no meshes, sketches from the records, and the reason is kept.
    summary = write_web_assets(tmp_path / "e", smoke_builder, index, source_root=None)
    assert summary["meshes"] == 0 and summary["sketches"] == 12
    assert "not found" in summary["skipped"][0]["reason"]
