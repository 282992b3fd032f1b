"""Sending one notification: a signed JSON webhook, a Slack-compatible webhook, or an e-mail over SMTP.

Each sender raises DeliveryError with a short reason (HTTP status, SMTP reply) that is safe to record:
it never carries the HMAC key or the SMTP password.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import smtplib
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from email.message import EmailMessage
from typing import Any

SIGNATURE_HEADER = "X-Backvault-Signature"
TIMESTAMP_HEADER = "X-Backvault-Timestamp"


class DeliveryError(Exception):
    """A sink did not accept a notification; the message says why (and holds no secret)."""


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """Return the webhook signature: hex HMAC-SHA256 over "TIMESTAMP.BODY" (the timestamp stops replays)."""
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def send_webhook(url: str, payload: dict[str, Any], secret: bytes | None, *, timeout: float = 10) -> None:
    """POST the payload as JSON, signed with the sink's HMAC key when it has one."""
    body = json.dumps(payload, sort_keys=True, default=str).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "backvault-notifications"}
    if secret is not None:
        timestamp = str(int(time.time()))
        headers[TIMESTAMP_HEADER] = timestamp
        headers[SIGNATURE_HEADER] = signature(secret, timestamp, body)
    _post(url, body, headers, timeout)


def send_slack(url: str, text: str, *, timeout: float = 10) -> None:
    """POST a Slack incoming-webhook message ({"text": ...})."""
    body = json.dumps({"text": text}).encode()
    _post(url, body, {"Content-Type": "application/json"}, timeout)


def send_email(
    *,
    host: str,
    port: int,
    sender: str,
    recipients: Sequence[str],
    subject: str,
    text: str,
    username: str | None = None,
    password: str | None = None,
    starttls: bool = False,
    timeout: float = 10,
) -> None:
    """Send a plain-text e-mail through an SMTP server."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Subject"] = subject
    message.set_content(text)
    try:
        with smtplib.SMTP(host, port, timeout=timeout) as client:
            if starttls:
                client.starttls(context=ssl.create_default_context())
            if username and password:
                client.login(username, password)
            client.send_message(message)
    except smtplib.SMTPException as error:
        raise DeliveryError(f"SMTP server {host}:{port} refused the message: {_first_line(error)}") from None
    except OSError as error:
        raise DeliveryError(f"SMTP server {host}:{port} is unreachable: {error.strerror or error}") from None


def _post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> None:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read(1024)
    except urllib.error.HTTPError as error:
        raise DeliveryError(f"webhook answered HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise DeliveryError(f"webhook is unreachable: {reason}") from None


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
