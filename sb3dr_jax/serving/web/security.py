"""Passwords (argon2id), session and CSRF tokens, the login rate limiter, upload checks."""

from __future__ import annotations

import collections
import hashlib
import hmac
import io
import re
import secrets
import threading
import time

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from PIL import Image

USERNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{3,32}$")
PASSWORD_MIN, PASSWORD_MAX = 8, 256

_hasher = PasswordHasher()  # argon2id, the library's (RFC 9106 "low memory") defaults
# Verifying against this when the user does not exist costs the same as a real check, so the
# response time does not tell which usernames exist.
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))


class InputError(ValueError):
    """Bad client input: `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def hash_password(password: str) -> str:
    """The argon2id hash (with its own salt and parameters) of a password."""
    return _hasher.hash(password)


def verify_password(stored_hash: str | None, password: str) -> bool:
    """Checks a password against a stored hash (None: an unknown user; still costs a check)."""
    try:
        return _hasher.verify(stored_hash or _DUMMY_HASH, password) and stored_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def check_credentials(username: str, password: str) -> None:
    """Raises `InputError(422)` naming what is wrong with a new account's username/password."""
    if not USERNAME_RE.match(username or ""):
        raise InputError(422, "username: 3-32 characters of letters, digits, '.', '_' or '-'")
    if not (PASSWORD_MIN <= len(password or "") <= PASSWORD_MAX):
        raise InputError(422, f"password: {PASSWORD_MIN} to {PASSWORD_MAX} characters")


def new_token() -> str:
    """A 256-bit random URL-safe token."""
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """What the database keeps of a session token (a leaked table holds no usable cookie)."""
    return hashlib.sha256(token.encode()).hexdigest()


def same_token(a: str | None, b: str | None) -> bool:
    """Constant-time equality of two tokens (False when either is missing)."""
    return bool(a) and bool(b) and hmac.compare_digest(a.encode(), b.encode())


class RateLimiter:
    """Sliding-window failure counter per key (client address, username).

    `check(key)` gives the seconds to wait (0 when allowed); `fail(key)` records a failure;
    `reset(key)` forgets a key after a success.
    """

    def __init__(self, max_failures: int, window_s: float):
        self.max_failures, self.window_s = int(max_failures), float(window_s)
        self._events: dict[str, collections.deque] = collections.defaultdict(collections.deque)
        self._lock = threading.Lock()

    def _trim(self, q: collections.deque, now: float) -> None:
        while q and q[0] <= now - self.window_s:
            q.popleft()

    def check(self, key: str) -> float:
        now = time.monotonic()
        with self._lock:
            q = self._events.get(key)
            if not q:
                return 0.0
            self._trim(q, now)
            if len(q) < self.max_failures:
                return 0.0
            return max(0.0, q[0] + self.window_s - now)

    def fail(self, key: str) -> None:
        now = time.monotonic()
        with self._lock:
            q = self._events[key]
            self._trim(q, now)
            q.append(now)
            if len(self._events) > 100_000:  # bounded memory under a flood of keys
                for k in [k for k, v in self._events.items() if not v][:50_000]:
                    del self._events[k]

    def reset(self, key: str) -> None:
        with self._lock:
            self._events.pop(key, None)


IMAGE_TYPES = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG"}


def check_image(data: bytes, *, max_pixels: int, max_side: int) -> tuple[int, int]:
    """Validates an uploaded image before it is decoded.

    Only the signature and the header are read here (PIL's `open` is lazy), so a
    decompression bomb or a huge canvas is refused before any pixel buffer exists.

    Args:
      data: the encoded bytes.
      max_pixels: the largest width x height accepted.
      max_side: the largest width or height accepted.

    Returns:
      (width, height).

    Raises:
      InputError: 400 empty, 415 not PNG/JPEG, 413 too many pixels, 400 unreadable header.
    """
    if not data:
        raise InputError(400, "empty image")
    kind = next((name for sig, name in IMAGE_TYPES.items() if data.startswith(sig)), None)
    if kind is None:
        raise InputError(415, "unsupported image type: send a PNG or JPEG")
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != kind:
                raise InputError(415, f"image header says {im.format}, content is {kind}")
            w, h = im.size
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL raises many types on corrupt headers
        raise InputError(400, f"unreadable {kind} header: {type(e).__name__}") from None
    if w < 1 or h < 1:
        raise InputError(400, f"image has no pixels ({w}x{h})")
    if w > max_side or h > max_side or w * h > max_pixels:
        raise InputError(
            413, f"image too large: {w}x{h} pixels (limit {max_side} a side, {max_pixels} in all)"
        )
    return w, h
