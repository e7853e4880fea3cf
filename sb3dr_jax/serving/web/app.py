"""The web retrieval system: a FastAPI app around one loaded `QueryEngine`.

`create_app(settings)` loads the export once (student, index, web assets), opens the history
database and returns the ASGI app: the JSON API under `/api` (OpenAPI document at
`/api/openapi.json`), the front end at `/` and the three.js modules from the npm package at
`/vendor/three/`. `python -m launch.serve` runs it under uvicorn.

Model calls run on a small thread pool, off the event loop; at most `workers + max_waiting`
queries are admitted at once and the rest are answered 503 (JSON, with Retry-After) rather
than queued without bound. Every error is a JSON body `{"status", "error"}`; nothing leaks a
stack trace.
"""

import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import pathlib
import re
import secrets
import time
import urllib.parse
from typing import Annotated

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from sb3dr_jax.data.errors import SketchError
from sb3dr_jax.serving.assets import WebAssets
from sb3dr_jax.serving.query import QueryEngine
from sb3dr_jax.serving.web import db as dbm
from sb3dr_jax.serving.web import security as sec

log = logging.getLogger("sb3dr_jax.serving.web")

WEB_DIR = pathlib.Path(__file__).resolve().parent
STATIC_DIR = WEB_DIR / "static"
THREE_DIR = WEB_DIR / "node_modules" / "three"
NPM_INSTALL = "npm ci --prefix sb3dr_jax/serving/web"
SESSION_COOKIE, CSRF_COOKIE, CSRF_HEADER = "sb3dr_session", "sb3dr_csrf", "x-csrf-token"
UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}


@dataclasses.dataclass
class Settings:
    """Server settings (every limit in one place).

    Attributes:
      export_dir: the student export (`<distill workdir>/export`).
      db_path: the SQLite history database.
      workers: model calls running at once (threads; one keeps JAX's CPU threads unshared).
      max_waiting: model calls allowed to wait; beyond `workers + max_waiting`: 503.
      max_body_bytes: request body limit (413 above it).
      max_pixels, max_side: upload limits checked on the header, before decoding.
      default_k, max_k: results per query.
      login_failures, login_window_s: failed logins per address and per username per window.
      registrations, registration_window_s: new accounts per address per window.
      session_days: session lifetime.
      secure_cookies: True / False, or None: Secure when the request came over HTTPS
        (behind a proxy, run uvicorn with --proxy-headers so X-Forwarded-Proto counts).
      warmup: run one query at start-up so the first user does not wait for compilation.
    """

    export_dir: str
    db_path: str = "workdirs/web/web.sqlite"
    workers: int = 1
    max_waiting: int = 16
    max_body_bytes: int = 2 * 1024 * 1024
    max_pixels: int = 4096 * 4096
    max_side: int = 8192
    default_k: int = 10
    max_k: int = 50
    login_failures: int = 5
    login_window_s: float = 60.0
    registrations: int = 20
    registration_window_s: float = 600.0
    session_days: float = 14.0
    secure_cookies: bool | None = None
    warmup: bool = True


class Busy(Exception):
    """Too many model calls in flight."""


class ModelRunner:
    """Runs blocking model calls on a bounded thread pool, admitting a bounded number."""

    def __init__(self, workers: int, max_waiting: int):
        self.workers = max(1, int(workers))
        self.capacity = self.workers + max(0, int(max_waiting))
        self.in_flight = 0  # only touched on the event loop thread: no lock needed
        self.rejected = 0
        self._pool = concurrent.futures.ThreadPoolExecutor(self.workers, "sb3dr-model")

    async def run(self, fn, *args):
        """Runs `fn(*args)` on the pool; raises `Busy` when `capacity` calls are in flight."""
        if self.in_flight >= self.capacity:
            self.rejected += 1
            raise Busy
        self.in_flight += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        finally:
            self.in_flight -= 1

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: 413 for bodies over the limit, by Content-Length or while streaming."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, int(max_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        try:
            declared = int(headers.get(b"content-length", b"0") or 0)
        except ValueError:
            declared = 0
        if declared > self.max_bytes:
            return await self._reject(send)
        seen, started = 0, False

        async def limited_receive():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge
            return msg

        async def tracking_send(msg):
            nonlocal started
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._reject(send)

    async def _reject(self, send):
        body = json.dumps(
            {"status": 413, "error": f"request body over {self.max_bytes} bytes"}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def export_identity(export_dir: str | pathlib.Path) -> str:
    """A short content hash of the student and the index: which export answered a query."""
    d = pathlib.Path(export_dir)
    h = hashlib.sha256()
    for name in ("student.json", "student.msgpack", "index.json", "index.npz", "index.faiss"):
        p = d / name
        if p.exists():
            h.update(name.encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


class Credentials(BaseModel):
    username: str
    password: str


class BenchmarkRef(BaseModel):
    split: str = "test"
    id: str


class QueryBody(BaseModel):
    """JSON query: a canvas as a data URL (`data:image/png;base64,...`), or a benchmark sketch."""

    image: str | None = None
    benchmark: BenchmarkRef | None = None


def _error(status: int, message: str, **extra) -> JSONResponse:
    headers = extra.pop("headers", None)
    return JSONResponse({"status": status, "error": message, **extra}, status, headers=headers)


def _q(s: str) -> str:
    return urllib.parse.quote(s, safe="")


def _csp(index_html: str) -> str:
    """Content-Security-Policy allowing only this origin's scripts and the page's import map."""
    hashes = [
        "'sha256-" + base64.b64encode(hashlib.sha256(m.encode()).digest()).decode() + "'"
        for m in re.findall(r"<script type=\"importmap\">(.*?)</script>", index_html, re.S)
    ]
    return (
        f"default-src 'self'; script-src 'self' {' '.join(hashes)}; img-src 'self' data: blob:; "
        "style-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'; form-action 'self'"
    )


def _warmup_sketch() -> bytes:
    a = np.full((64, 64), 255, np.uint8)
    a[16:48, 30:34] = 0
    a[30:34, 16:48] = 0
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def create_app(settings: Settings, engine: QueryEngine | None = None) -> FastAPI:
    """Builds the app.

    Args:
      settings: the server settings.
      engine: an already loaded engine (tests share one); loaded from `export_dir` when None.

    Returns:
      The FastAPI app (`app.state` holds the engine, the assets, the database, the runner).

    Raises:
      FileNotFoundError: no export at `settings.export_dir` (the message names the command).
    """
    engine = engine or QueryEngine.from_export(settings.export_dir)
    assets = WebAssets.load(settings.export_dir)
    export_id = export_identity(settings.export_dir)
    db_engine, Db = dbm.open_database(settings.db_path)
    runner = ModelRunner(settings.workers, settings.max_waiting)
    login_limit = sec.RateLimiter(settings.login_failures, settings.login_window_s)
    register_limit = sec.RateLimiter(settings.registrations, settings.registration_window_s)
    index_html = (STATIC_DIR / "index.html").read_text()
    csp = _csp(index_html)
    have_three = (THREE_DIR / "build" / "three.module.js").exists()
    if not have_three:
        log.warning("three.js not installed (run `%s`): the 3D viewer is off", NPM_INSTALL)
    if settings.warmup:
        engine.query(_warmup_sketch(), k=settings.max_k)  # compiles before any user waits

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        runner.shutdown()
        db_engine.dispose()

    app = FastAPI(
        lifespan=lifespan,
        title="sb3dr_jax sketch-based 3D retrieval",
        version="1",
        openapi_url="/api/openapi.json",
        docs_url=None,  # the interactive docs pages load their scripts from a CDN
        redoc_url=None,
    )
    app.state.settings, app.state.engine, app.state.assets = settings, engine, assets
    app.state.db_engine, app.state.runner, app.state.export_id = db_engine, runner, export_id

    # ---- errors: always JSON with a status, never a stack trace -------------------------
    @app.exception_handler(HTTPException)
    async def _http_error(request, exc: HTTPException):
        return _error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc: RequestValidationError):
        detail = [
            {"loc": [str(x) for x in e.get("loc", ())], "msg": str(e.get("msg", ""))}
            for e in exc.errors()
        ]
        return _error(422, "invalid request", detail=detail)

    @app.exception_handler(sec.InputError)
    async def _input_error(request, exc: sec.InputError):
        return _error(exc.status, str(exc))

    @app.exception_handler(SketchError)
    async def _sketch_error(request, exc: SketchError):
        message = exc.reason
        if "blank" in message:
            message = "blank sketch: draw something (no ink found)"
        return _error(422, message)

    @app.exception_handler(Busy)
    async def _busy(request, exc):
        return _error(
            503,
            "the server is busy: too many queries in flight, try again",
            headers={"Retry-After": "1"},
        )

    @app.exception_handler(Exception)
    async def _internal(request, exc):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error(500, "internal server error")

    @app.middleware("http")
    async def _headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        if request.url.path.startswith("/api/") and "cache-control" not in response.headers:
            response.headers["Cache-Control"] = "no-store"
        return response

    # ---- sessions, CSRF ---------------------------------------------------------------------
    def secure(request: Request) -> bool:
        if settings.secure_cookies is not None:
            return settings.secure_cookies
        return request.url.scheme == "https"

    def set_cookie(response: Response, request: Request, name: str, value: str, max_age=None):
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            httponly=True,
            samesite="lax",
            secure=secure(request),
            path="/",
        )

    def session_of(request: Request):
        """(session row, user row) for the request's cookie, or (None, None)."""
        if hasattr(request.state, "session"):
            return request.state.session
        found = (None, None)
        token = request.cookies.get(SESSION_COOKIE)
        if token:
            with Db() as s:
                row = s.execute(
                    select(dbm.Session, dbm.User)
                    .join(dbm.User, dbm.User.id == dbm.Session.user_id)
                    .where(dbm.Session.token_hash == sec.token_hash(token))
                ).first()
                if row is not None and row[0].expires_at > dbm.utcnow():
                    found = (row[0], row[1])
        request.state.session = found
        return found

    def csrf_token(request: Request) -> str | None:
        session, _ = session_of(request)
        return session.csrf_token if session is not None else request.cookies.get(CSRF_COOKIE)

    def check_csrf(request: Request) -> None:
        """Every state-changing request: same-origin (when the browser says) and the token."""
        origin = request.headers.get("origin")
        if origin and urllib.parse.urlsplit(origin).netloc != request.headers.get("host"):
            raise HTTPException(403, "cross-origin request refused")
        if not sec.same_token(request.headers.get(CSRF_HEADER), csrf_token(request)):
            raise HTTPException(
                403, "missing or wrong CSRF token: GET /api/session and send it as X-CSRF-Token"
            )

    def csrf_user(request: Request):
        """Dependency of every unsafe route: CSRF check, then the user (or None)."""
        check_csrf(request)
        return session_of(request)[1]

    def required_user(request: Request):
        user = session_of(request)[1]
        if user is None:
            raise HTTPException(401, "log in first")
        return user

    CsrfUser = Annotated[dbm.User | None, Depends(csrf_user)]
    LoggedIn = Annotated[dbm.User, Depends(required_user)]

    def client_key(request: Request) -> str:
        return request.client.host if request.client else "?"

    def start_session(request: Request, response: Response, user: dbm.User) -> str:
        token, csrf = sec.new_token(), sec.new_token()
        now = time.time()
        with Db.begin() as s:
            s.execute(delete(dbm.Session).where(dbm.Session.expires_at < dbm.utcnow()))  # tidy
            s.add(
                dbm.Session(
                    token_hash=sec.token_hash(token),
                    user_id=user.id,
                    csrf_token=csrf,
                    created_at=dbm.utcnow(),
                    expires_at=_iso(now + settings.session_days * 86400),
                )
            )
        age = int(settings.session_days * 86400)
        set_cookie(response, request, SESSION_COOKIE, token, max_age=age)
        set_cookie(response, request, CSRF_COOKIE, csrf, max_age=age)
        return csrf

    def session_json(user, csrf) -> dict:
        return {"user": None if user is None else {"username": user.username}, "csrf": csrf}

    # ---- API: info, session, auth -------------------------------------------------------
    @app.get("/api/health", tags=["info"])
    async def health():
        """Liveness and queue state."""
        return {
            "status": "ok",
            "export_id": export_id,
            "in_flight": runner.in_flight,
            "capacity": runner.capacity,
            "rejected": runner.rejected,
        }

    @app.get("/api/info", tags=["info"])
    def info():
        """What the loaded export holds and the request limits."""
        idx = engine.index
        return {
            "export_id": export_id,
            "teacher_id": engine.meta.get("teacher_id"),
            "dataset": assets.manifest.get("dataset") or idx.metadata.get("dataset"),
            "num_models": len(idx.model_ids),
            "classes": list(idx.class_names),
            "sketch_splits": assets.splits(),
            "web_assets": assets.available,
            "viewer": have_three,
            "default_k": settings.default_k,
            "max_k": settings.max_k,
            "max_body_bytes": settings.max_body_bytes,
            "max_pixels": settings.max_pixels,
        }

    @app.get("/api/session", tags=["account"])
    def get_session(request: Request, response: Response):
        """The logged-in user (or null) and the CSRF token for state-changing requests."""
        session, user = session_of(request)
        csrf = csrf_token(request)
        if not csrf:
            csrf = sec.new_token()
            set_cookie(response, request, CSRF_COOKIE, csrf)
        return session_json(user, csrf)

    @app.post("/api/register", tags=["account"], status_code=201)
    def register(body: Credentials, request: Request, response: Response, _: CsrfUser):
        """Creates an account and logs it in."""
        key = "reg:" + client_key(request)
        wait = register_limit.check(key)
        if wait:
            raise HTTPException(
                429, "too many new accounts from here", {"Retry-After": _ceil(wait)}
            )
        sec.check_credentials(body.username, body.password)
        register_limit.fail(key)  # every attempt counts
        name = body.username.lower()
        pw_hash = sec.hash_password(body.password)
        try:
            with Db.begin() as s:
                user = dbm.User(username=name, password_hash=pw_hash, created_at=dbm.utcnow())
                s.add(user)
        except IntegrityError:
            raise HTTPException(409, "username taken") from None
        return session_json(user, start_session(request, response, user))

    @app.post("/api/login", tags=["account"])
    def login(body: Credentials, request: Request, response: Response, _: CsrfUser):
        """Logs in (rate-limited per address and per username)."""
        name = (body.username or "").lower()
        keys = ("ip:" + client_key(request), "user:" + name)
        wait = max(login_limit.check(k) for k in keys)
        if wait:
            raise HTTPException(
                429, "too many failed logins: wait and try again", {"Retry-After": _ceil(wait)}
            )
        with Db() as s:
            user = s.scalar(select(dbm.User).where(dbm.User.username == name))
        if not sec.verify_password(user.password_hash if user else None, body.password or ""):
            for k in keys:
                login_limit.fail(k)
            raise HTTPException(401, "wrong username or password")
        login_limit.reset(keys[1])
        return session_json(user, start_session(request, response, user))

    @app.post("/api/logout", tags=["account"])
    def logout(request: Request, response: Response, _: CsrfUser):
        """Ends the session (the cookie stops working at once)."""
        token = request.cookies.get(SESSION_COOKIE)
        if token:
            with Db.begin() as s:
                s.execute(
                    delete(dbm.Session).where(dbm.Session.token_hash == sec.token_hash(token))
                )
        response.delete_cookie(SESSION_COOKIE, path="/")
        csrf = sec.new_token()
        set_cookie(response, request, CSRF_COOKIE, csrf)
        return session_json(None, csrf)

    # ---- API: queries -------------------------------------------------------------------
    def result_json(results: list[dict]) -> list[dict]:
        out = []
        for rank, r in enumerate(results, 1):
            m = assets.models.get(r["model_id"])
            base = f"/api/models/{_q(r['model_id'])}"
            out.append(
                {
                    "rank": rank,
                    "model_id": r["model_id"],
                    "label": r["label"],
                    "score": round(float(r["score"]), 6),
                    "thumbnail_url": f"{base}/thumbnail.png" if m and m.thumbnail else None,
                    "mesh_url": f"{base}/mesh.glb" if m and m.mesh else None,
                }
            )
        return out

    def run_query(data: bytes, k: int) -> tuple[list[dict], float]:
        t0 = time.perf_counter()
        # Always the top `max_k`, cut to k: the index's search compiles once per k, and a user
        # changing k should not wait for a compilation.
        results = engine.query(data, k=settings.max_k)[:k]
        return results, (time.perf_counter() - t0) * 1000.0

    async def read_query(request: Request) -> tuple[bytes, str]:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "multipart/form-data":
            form = await request.form(max_files=1, max_fields=4)
            up = form.get("sketch")
            if up is None or isinstance(up, str):
                raise sec.InputError(400, "multipart body needs a file field named 'sketch'")
            return await up.read(), "upload"
        if ctype == "application/json":
            try:
                body = QueryBody.model_validate_json(await request.body())
            except ValueError:
                raise sec.InputError(
                    422, "JSON body must be {'image': data URL} or {'benchmark': {split, id}}"
                ) from None
            if body.benchmark is not None:
                a = assets.sketch(body.benchmark.split, body.benchmark.id)
                path = a and assets.file(a.file)
                if path is None:
                    raise HTTPException(404, f"no benchmark sketch {body.benchmark.id!r}")
                return path.read_bytes(), f"benchmark:{a.split}/{a.sketch_id}"[:200]
            if body.image:
                m = re.match(r"data:image/(png|jpeg);base64,(.*)$", body.image, re.S)
                if not m:
                    raise sec.InputError(415, "image must be a data:image/png;base64 URL")
                try:
                    return base64.b64decode(m.group(2), validate=True), "canvas"
                except binascii.Error:
                    raise sec.InputError(400, "image: invalid base64") from None
            raise sec.InputError(422, "JSON body needs 'image' or 'benchmark'")
        raise sec.InputError(415, "send multipart/form-data (field 'sketch') or application/json")

    def store_query(user_id: int, data: bytes, source: str, k: int, ms: float, results) -> str:
        public_id = secrets.token_urlsafe(12)
        with Db.begin() as s:
            s.add(
                dbm.Query(
                    public_id=public_id,
                    user_id=user_id,
                    created_at=dbm.utcnow(),
                    export_id=export_id,
                    source=source,
                    k=k,
                    query_ms=int(round(ms)),
                    results_json=json.dumps(results),
                    sketch_png=data,
                )
            )
        return public_id

    @app.post(
        "/api/query",
        tags=["query"],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "properties": {"sketch": {"type": "string", "format": "binary"}},
                            "required": ["sketch"],
                        }
                    },
                    "application/json": {"schema": QueryBody.model_json_schema()},
                },
            }
        },
    )
    async def query(request: Request, k: int | None = None):
        """Ranks the gallery for a sketch: a PNG/JPEG upload (multipart field `sketch`), a
        canvas data URL or a benchmark sketch (JSON). Logged-in users' queries are stored."""
        user = await run_in_threadpool(csrf_user, request)
        k = settings.default_k if k is None else k
        if not 1 <= k <= settings.max_k:
            raise sec.InputError(422, f"k: 1 to {settings.max_k}")
        data, source = await read_query(request)
        sec.check_image(data, max_pixels=settings.max_pixels, max_side=settings.max_side)
        t0 = time.perf_counter()
        results, model_ms = await runner.run(run_query, data, k)
        results = result_json(results)
        history_id = None
        if user is not None:
            history_id = await run_in_threadpool(
                store_query, user.id, data, source, k, model_ms, results
            )
        return {
            "results": results,
            "query_ms": round(model_ms, 1),
            "total_ms": round((time.perf_counter() - t0) * 1000.0, 1),
            "export_id": export_id,
            "history_id": history_id,
            "source": source,
        }

    # ---- API: benchmark sketches, models ------------------------------------------------
    @app.get("/api/sketches", tags=["data"])
    def sketches(split: str = "test", label: str | None = None):
        """The loaded dataset's benchmark sketches of a split, optionally of one class."""
        if split not in assets.splits():
            raise HTTPException(404, f"no sketches of split {split!r}; have {assets.splits()}")
        items = [s for s in assets.sketches if s.split == split]
        classes = sorted({s.label for s in items})
        if label is not None:
            if label not in classes:
                raise HTTPException(404, f"no sketches of class {label!r}")
            items = [s for s in items if s.label == label]
        return {
            "split": split,
            "classes": classes,
            "sketches": [
                {
                    "id": s.sketch_id,
                    "label": s.label,
                    "split": s.split,
                    "url": f"/api/sketches/{_q(s.split)}/{_q(s.sketch_id)}.png",
                }
                for s in items
            ],
        }

    def asset_file(relative: str | None, what: str, media: str) -> FileResponse:
        path = assets.file(relative)
        if path is None:
            raise HTTPException(404, f"no {what} in this export")
        return FileResponse(path, media_type=media, headers={"Cache-Control": "max-age=3600"})

    @app.get("/api/sketches/{split}/{sketch_id}.png", tags=["data"])
    def sketch_png(split: str, sketch_id: str):
        """A benchmark sketch (PNG, dark ink on white)."""
        a = assets.sketch(split, sketch_id)
        return asset_file(a and a.file, f"sketch {sketch_id!r}", "image/png")

    def model_assets(model_id: str):
        if model_id not in engine.index.model_ids:
            raise HTTPException(404, f"no model {model_id!r} in this export")
        return assets.models.get(model_id)

    @app.get("/api/models/{model_id}", tags=["data"])
    def model(model_id: str):
        """One gallery model: class and the URLs of its thumbnail, rendered views and mesh."""
        m = model_assets(model_id)
        i = engine.index.model_ids.index(model_id)
        base = f"/api/models/{_q(model_id)}"
        return {
            "model_id": model_id,
            "label": engine.index.class_names[int(engine.index.labels[i])],
            "thumbnail_url": f"{base}/thumbnail.png" if m and m.thumbnail else None,
            "views_url": f"{base}/views.png" if m and m.views else None,
            "num_views": m.num_views if m else 0,
            "mesh_url": f"{base}/mesh.glb" if m and m.mesh else None,
        }

    @app.get("/api/models/{model_id}/thumbnail.png", tags=["data"])
    def model_thumbnail(model_id: str):
        """The model's thumbnail (one rendered view)."""
        m = model_assets(model_id)
        return asset_file(m and m.thumbnail, "thumbnail", "image/png")

    @app.get("/api/models/{model_id}/views.png", tags=["data"])
    def model_views(model_id: str):
        """All rendered views of the model side by side."""
        m = model_assets(model_id)
        return asset_file(m and m.views, "rendered views", "image/png")

    @app.get("/api/models/{model_id}/mesh.glb", tags=["data"])
    def model_mesh(model_id: str):
        """The model's web mesh (binary glTF, decimated, in the unit sphere)."""
        m = model_assets(model_id)
        return asset_file(m and m.mesh, "mesh", "model/gltf-binary")

    # ---- API: history -------------------------------------------------------------------
    def history_item(q: dbm.Query, full: bool) -> dict:
        results = json.loads(q.results_json)
        item = {
            "id": q.public_id,
            "created_at": q.created_at,
            "export_id": q.export_id,
            "same_export": q.export_id == export_id,
            "source": q.source,
            "k": q.k,
            "query_ms": q.query_ms,
            "sketch_url": f"/api/history/{q.public_id}/sketch.png",
            "top": results[:3] if not full else None,
        }
        if full:
            item["results"] = results
            del item["top"]
        return item

    def own_query(s, user, public_id: str) -> dbm.Query:
        q = s.scalar(
            select(dbm.Query).where(dbm.Query.public_id == public_id, dbm.Query.user_id == user.id)
        )
        if q is None:  # another user's id looks exactly like a missing one
            raise HTTPException(404, "no such query in your history")
        return q

    @app.get("/api/history", tags=["history"])
    def history(user: LoggedIn, limit: int = 50, offset: int = 0):
        """The user's queries, newest first."""
        if not (1 <= limit <= 200 and offset >= 0):
            raise sec.InputError(422, "limit: 1 to 200, offset >= 0")
        with Db() as s:
            total = s.scalar(select(func.count()).where(dbm.Query.user_id == user.id))
            rows = s.scalars(
                select(dbm.Query)
                .where(dbm.Query.user_id == user.id)
                .order_by(dbm.Query.created_at.desc(), dbm.Query.id.desc())
                .limit(limit)
                .offset(offset)
            ).all()
            return {"total": total, "items": [history_item(q, False) for q in rows]}

    @app.get("/api/history/{public_id}", tags=["history"])
    def history_get(public_id: str, user: LoggedIn):
        """One of the user's queries with all its results."""
        with Db() as s:
            return history_item(own_query(s, user, public_id), True)

    @app.get("/api/history/{public_id}/sketch.png", tags=["history"])
    def history_sketch(public_id: str, user: LoggedIn):
        """The sketch of one of the user's queries, as sent."""
        with Db() as s:
            data = own_query(s, user, public_id).sketch_png
        media = "image/jpeg" if data.startswith(b"\xff\xd8") else "image/png"
        return Response(data, media_type=media, headers={"Cache-Control": "private, no-store"})

    @app.delete("/api/history/{public_id}", tags=["history"])
    def history_delete(public_id: str, request: Request, user: CsrfUser):
        """Deletes one of the user's queries."""
        if user is None:
            raise HTTPException(401, "log in first")
        with Db.begin() as s:
            s.delete(own_query(s, user, public_id))
        return {"status": "deleted", "id": public_id}

    # ---- front end ----------------------------------------------------------------------
    page_headers = {"Content-Security-Policy": csp, "Cache-Control": "no-cache"}

    @app.get("/", include_in_schema=False)
    def index():
        return Response(index_html, media_type="text/html", headers=page_headers)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    if have_three:
        app.mount("/vendor/three/build", StaticFiles(directory=THREE_DIR / "build"), name="three")
        app.mount(
            "/vendor/three/examples/jsm",
            StaticFiles(directory=THREE_DIR / "examples" / "jsm"),
            name="three-addons",
        )

    # Added last: the outermost of the app's middleware, so nothing reads an oversized body.
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    return app


def _iso(t: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _ceil(seconds: float) -> str:
    return str(max(1, int(np.ceil(seconds))))
