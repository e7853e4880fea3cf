"""Users, sessions and query history in SQLite (WAL) through SQLAlchemy 2.

The schema is versioned (`PRAGMA user_version`) and changed only by the ordered `MIGRATIONS`
below, each applied once in a transaction: a database written by an older version of the app
is upgraded in place with its rows kept, and one written by a newer version is refused rather
than silently misread. The ORM classes mirror the latest migration (a test checks they agree).
"""

from __future__ import annotations

import datetime as dt
import os
import pathlib

from sqlalchemy import (
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker


class SchemaError(ValueError):
    """A database this version of the app cannot use (written by a newer version)."""


# Each entry: (version, statements). Append new versions; never edit an applied one.
MIGRATIONS: list[tuple[int, list[str]]] = [
    (
        1,
        [
            """CREATE TABLE users (
                id INTEGER PRIMARY KEY,
                username VARCHAR(32) NOT NULL UNIQUE,
                password_hash VARCHAR(255) NOT NULL,
                created_at VARCHAR(32) NOT NULL
            )""",
            """CREATE TABLE sessions (
                token_hash VARCHAR(64) PRIMARY KEY,
                user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
                csrf_token VARCHAR(64) NOT NULL,
                created_at VARCHAR(32) NOT NULL,
                expires_at VARCHAR(32) NOT NULL
            )""",
            "CREATE INDEX ix_sessions_user ON sessions (user_id)",
            """CREATE TABLE queries (
                id INTEGER PRIMARY KEY,
                public_id VARCHAR(32) NOT NULL UNIQUE,
                user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
                created_at VARCHAR(32) NOT NULL,
                export_id VARCHAR(64) NOT NULL,
                source VARCHAR(200) NOT NULL,
                k INTEGER NOT NULL,
                query_ms INTEGER NOT NULL,
                results_json TEXT NOT NULL,
                sketch_png BLOB NOT NULL
            )""",
            "CREATE INDEX ix_queries_user_time ON queries (user_id, created_at)",
        ],
    ),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(32), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[str] = mapped_column(String(32))


class Session(Base):
    __tablename__ = "sessions"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[str] = mapped_column(String(32))
    expires_at: Mapped[str] = mapped_column(String(32))


class Query(Base):
    __tablename__ = "queries"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    public_id: Mapped[str] = mapped_column(String(32), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    created_at: Mapped[str] = mapped_column(String(32))
    export_id: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(200))
    k: Mapped[int] = mapped_column(Integer)
    query_ms: Mapped[int] = mapped_column(Integer)
    results_json: Mapped[str] = mapped_column(Text)
    sketch_png: Mapped[bytes] = mapped_column(LargeBinary)


def utcnow() -> str:
    """Now, UTC, ISO 8601 with a `Z` (sortable as text)."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _on_connect(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    # WAL: readers never block the writer (history pages while queries are being stored);
    # busy_timeout: concurrent writers wait for the lock instead of failing.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


def migrate(engine: Engine) -> int:
    """Brings the schema to `SCHEMA_VERSION`.

    Args:
      engine: the database.

    Returns:
      The version the database had before.

    Raises:
      SchemaError: the database is newer than this code.
    """
    with engine.begin() as conn:
        before = int(conn.execute(text("PRAGMA user_version")).scalar() or 0)
        if before > SCHEMA_VERSION:
            raise SchemaError(
                f"{engine.url.database}: schema version {before} is newer than this app's "
                f"{SCHEMA_VERSION}; upgrade sb3dr_jax or point --db at another file"
            )
        for version, statements in MIGRATIONS:
            if version <= before:
                continue
            for stmt in statements:
                conn.execute(text(stmt))
            conn.execute(text(f"PRAGMA user_version={int(version)}"))
    return before


def open_database(path: str | os.PathLike) -> tuple[Engine, sessionmaker]:
    """Opens (creating and migrating as needed) the SQLite database at `path`.

    Args:
      path: the database file (its folder is created).

    Returns:
      (engine, session factory).
    """
    p = pathlib.Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(f"sqlite:///{p}", connect_args={"check_same_thread": False})
    event.listen(engine, "connect", _on_connect)
    migrate(engine)
    return engine, sessionmaker(engine, expire_on_commit=False)


def orm_matches_schema(engine: Engine) -> bool:
    """True when the migrated tables have exactly the ORM classes' columns."""
    insp = inspect(engine)
    for table in Base.metadata.sorted_tables:
        cols = {c["name"] for c in insp.get_columns(table.name)}
        if cols != {c.name for c in table.columns}:
            return False
    return True
