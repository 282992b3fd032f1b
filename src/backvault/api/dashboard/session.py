"""Dashboard sessions: signed cookies, the same-origin check of form posts, and the login throttle.

A session cookie holds ``v1.<access key id>.<expiry>.<signature>``, the signature an HMAC-SHA256 over
the key id and the expiry under a random key made when the process starts. The user's secret is never
in it: a stolen cookie is worth one key id for at most SESSION_SECONDS, and every request looks the
key up again, so deleting or deactivating the key ends its sessions at once. Restarting the server
ends every session (the signing key is gone), which is the price of keeping no session state.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

from backvault.api.throttle import RequestThrottled, Throttle

COOKIE_NAME = "backvault_dashboard"
SESSION_SECONDS = 8 * 3600
TOKEN_VERSION = "v1"
# Login attempts allowed per client address and per key id: a burst, then one every 5 seconds.
LOGIN_BURST = 10
LOGIN_RATE_PER_SECOND = 0.2
_KEY_ID = re.compile(r"^[A-Z0-9]{16,32}$")


@dataclass(frozen=True)
class Session:
    """A verified session: the key id it was opened with and when it ends."""

    access_key_id: str
    expires_at: datetime


class SessionSigner:
    """Issues and verifies session tokens with a per-process random key."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key if key is not None else secrets.token_bytes(32)

    def issue(self, access_key_id: str, now: datetime) -> str:
        """Return a token for ``access_key_id`` valid for SESSION_SECONDS from ``now``."""
        if not _KEY_ID.match(access_key_id):
            raise ValueError("not an access key id")
        expiry = int(now.timestamp()) + SESSION_SECONDS
        return f"{TOKEN_VERSION}.{access_key_id}.{expiry}.{self._sign(access_key_id, expiry)}"

    def verify(self, token: str | None, now: datetime) -> Session | None:
        """Return the session a token opens, or None if it is missing, forged, malformed or expired."""
        if not token or len(token) > 200:
            return None
        parts = token.split(".")
        if len(parts) != 4 or parts[0] != TOKEN_VERSION or not _KEY_ID.match(parts[1]):
            return None
        _, access_key_id, expiry_text, signature = parts
        if not expiry_text.isdigit():
            return None
        expiry = int(expiry_text)
        if not hmac.compare_digest(signature, self._sign(access_key_id, expiry)):
            return None
        if expiry <= now.timestamp():
            return None
        return Session(access_key_id, datetime.fromtimestamp(expiry, tz=now.tzinfo))

    def _sign(self, access_key_id: str, expiry: int) -> str:
        message = f"{TOKEN_VERSION}.{access_key_id}.{expiry}".encode("ascii")
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def secrets_match(given: str, expected: str) -> bool:
    """Compare a submitted secret with the stored one in constant time."""
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def same_origin(headers: Mapping[str, str]) -> bool:
    """Tell whether a form post comes from a page of this server (Origin, else Referer, names our Host).

    Browsers send Origin with every POST; Referer is the fallback for old ones. A post with neither is
    refused: the dashboard's own forms always have one.
    """
    host = (headers.get("host") or "").strip().lower()
    if not host:
        return False
    origin = headers.get("origin")
    if origin is not None:
        return origin != "null" and _authority(origin) == host
    referer = headers.get("referer")
    return bool(referer) and _authority(referer or "") == host


def _authority(url: str) -> str:
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return ""
    if parts.scheme not in ("http", "https"):
        return ""
    return parts.netloc.lower()


class WrongCredentials(Exception):
    """The access key id and secret of a login do not match an active key (nothing more is told)."""


class LoginThrottle:
    """Limits login attempts per client address and per key id (a guessed key id cannot be hammered)."""

    def __init__(self, throttle: Throttle | None = None) -> None:
        self._throttle = throttle or Throttle(rate_per_second=LOGIN_RATE_PER_SECOND, burst=LOGIN_BURST)

    def allow(self, client_address: str, access_key_id: str) -> bool:
        """Take one attempt from both budgets; False when either is spent."""
        allowed = True
        for bucket in (f"address:{client_address}", f"key:{access_key_id[:64]}"):
            try:
                self._throttle.check(bucket)
            except RequestThrottled:  # this budget is spent for now
                allowed = False
        return allowed
