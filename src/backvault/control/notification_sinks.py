"""Notification sinks: where vault events go (a signed webhook, a Slack-compatible webhook, SMTP e-mail).

A sink plays the part of the SNS topic in AWS's PutBackupVaultNotifications: its ARN is
``arn:aws:sns:REGION:ACCOUNT:NAME``. Its secret (the webhook's HMAC key or the SMTP password) is
stored only wrapped by the master secret and never leaves the server: answers say ``HasSecret``.
"""

from __future__ import annotations

import hmac
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backvault.control.catalog.notification_models import NotificationDelivery, NotificationSink
from backvault.control.context import ServiceContext
from backvault.control.pagination import paginate
from backvault.control.secrets import SecretError
from backvault.domain.arn import Arn
from backvault.domain.errors import (
    AlreadyExistsException,
    DependencyFailureException,
    InvalidParameterValueException,
    ResourceNotFoundException,
)

SINK_TYPES = ("webhook", "slack", "email")
# The members of a sink's settings, by the keyword argument that sets each.
SETTING_MEMBERS = {
    "url": "Url",
    "smtp_host": "SmtpHost",
    "smtp_port": "SmtpPort",
    "sender": "Sender",
    "recipients": "Recipients",
    "username": "Username",
    "starttls": "StartTls",
}


def secret_purpose(sink_name: str) -> str:
    """The associated data a sink's secret is wrapped with (a secret cannot move to another sink)."""
    return f"notification-sink:{sink_name}"


def sink_arn(context: ServiceContext, name: str) -> str:
    """Return a sink's ARN (an SNS topic ARN, as vault notifications expect)."""
    arn_context = context.arn_context()
    return str(Arn(arn_context.partition, "sns", arn_context.region, arn_context.account, name))


def create_notification_sink(
    context: ServiceContext,
    name: str,
    sink_type: str,
    *,
    url: str | None = None,
    smtp_host: str | None = None,
    smtp_port: int = 25,
    sender: str | None = None,
    recipients: list[str] | None = None,
    username: str | None = None,
    starttls: bool = False,
    secret: str | None = None,
    failures_only: bool = False,
) -> dict[str, Any]:
    """Register a sink; ``secret`` (HMAC key or SMTP password) is stored only wrapped."""
    _check_name(name)
    settings = sink_settings(sink_type, url, smtp_host, smtp_port, sender, recipients, username, starttls)
    _check_flag(failures_only, "FailuresOnly")
    with context.catalog.transaction() as session:
        if session.get(NotificationSink, name) is not None:
            raise AlreadyExistsException(
                f"Notification sink {name!r} already exists.", Arn=sink_arn(context, name)
            )
        row = NotificationSink(
            name=name,
            arn=sink_arn(context, name),
            sink_type=sink_type,
            settings=settings,
            wrapped_secret=_wrap(context, name, secret),
            failures_only=failures_only,
            creation_date=context.now(),
        )
        session.add(row)
        return sink_to_aws(row)


def update_notification_sink(
    context: ServiceContext,
    name: str,
    *,
    sink_type: str | None = None,
    secret: str | None = None,
    clear_secret: bool = False,
    failures_only: bool | None = None,
    replace_settings: bool = False,
    **settings: Any,
) -> dict[str, Any]:
    """Change a sink in place; members not given stay (``settings`` are create's url, smtp_host...).

    With ``replace_settings`` the given settings replace all of them (apply declares whole sinks).
    """
    unknown = sorted(set(settings) - set(SETTING_MEMBERS))
    if unknown:
        raise InvalidParameterValueException(f"Unknown sink setting(s): {', '.join(unknown)}.")
    if clear_secret and secret is not None:
        raise InvalidParameterValueException("Give a new secret or clear the secret, not both.")
    if failures_only is not None:
        _check_flag(failures_only, "FailuresOnly")
    with context.catalog.transaction() as session:
        row = get_sink_row(session, name, for_update=True)
        new_type = sink_type or row.sink_type
        current = {key: row.settings.get(member) for key, member in SETTING_MEMBERS.items()}
        if replace_settings or new_type != row.sink_type:
            current = {}  # a sink changing kind takes only the settings given now
        merged = {**current, **{key: value for key, value in settings.items() if value is not None}}
        row.settings = sink_settings(
            new_type,
            merged.get("url"),
            merged.get("smtp_host"),
            int(merged.get("smtp_port") or 25),
            merged.get("sender"),
            merged.get("recipients"),
            merged.get("username"),
            bool(merged.get("starttls")),
        )
        row.sink_type = new_type
        if secret is not None:
            row.wrapped_secret = _wrap(context, name, secret)
        elif clear_secret:
            row.wrapped_secret = None
        if failures_only is not None:
            row.failures_only = failures_only
        return sink_to_aws(row)


def describe_notification_sink(context: ServiceContext, name: str) -> dict[str, Any]:
    """Return one sink (never its secret)."""
    with context.catalog.transaction() as session:
        return sink_to_aws(get_sink_row(session, name))


def list_notification_sinks(
    context: ServiceContext, *, max_results: int | None = None, next_token: str | None = None
) -> dict[str, Any]:
    """List sinks by name."""
    with context.catalog.transaction() as session:
        rows, token = paginate(
            session,
            select(NotificationSink),
            [NotificationSink.name],
            operation="ListNotificationSinks",
            max_results=max_results,
            next_token=next_token,
        )
        body: dict[str, Any] = {"Sinks": [sink_to_aws(row) for row in rows]}
        if token:
            body["NextToken"] = token
        return body


def delete_notification_sink(context: ServiceContext, name: str) -> dict[str, Any]:
    """Delete a sink and its delivery history."""
    with context.catalog.transaction() as session:
        row = get_sink_row(session, name)
        for delivery in session.scalars(
            select(NotificationDelivery).where(NotificationDelivery.sink_name == name)
        ):
            session.delete(delivery)
        session.flush()
        session.delete(row)
        return {}


def sink_secret_matches(context: ServiceContext, row: NotificationSink, secret: str) -> bool:
    """True if the sink's stored secret equals ``secret`` (apply compares without showing either)."""
    stored = unwrap_secret(context, row)
    return stored is not None and hmac.compare_digest(stored, secret.encode())


def unwrap_secret(context: ServiceContext, row: NotificationSink) -> bytes | None:
    """Return a sink's secret in clear, for sending; None when it has none."""
    if row.wrapped_secret is None:
        return None
    try:
        return context.master_secret.unwrap(row.wrapped_secret, secret_purpose(row.name))
    except SecretError as error:
        raise DependencyFailureException(f"Notification sink {row.name!r}: {error}") from None


def get_sink_row(session: Session, name: str, *, for_update: bool = False) -> NotificationSink:
    """Return a sink row, or raise ResourceNotFoundException."""
    row = session.get(NotificationSink, name, with_for_update=for_update)
    if row is None:
        raise ResourceNotFoundException(f"Notification sink {name!r} does not exist.")
    return row


def sink_settings(
    sink_type: str,
    url: str | None,
    smtp_host: str | None,
    smtp_port: int,
    sender: str | None,
    recipients: list[str] | None,
    username: str | None,
    starttls: bool,
) -> dict[str, Any]:
    """Validate a sink's settings and return them as stored (and as Describe shows them)."""
    if sink_type not in SINK_TYPES:
        raise InvalidParameterValueException(
            f"Sink type {sink_type!r} is not valid; use one of {', '.join(SINK_TYPES)}."
        )
    if sink_type in ("webhook", "slack"):
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise InvalidParameterValueException(
                f"A {sink_type} sink needs an http:// or https:// URL, got {url!r}."
            )
        if "@" in url.split("://", 1)[1].split("/", 1)[0]:
            raise InvalidParameterValueException(
                "Put webhook credentials in the sink's secret, not in its URL."
            )
        return {"Url": url}
    if not smtp_host or not sender or not recipients:
        raise InvalidParameterValueException(
            "An email sink needs smtp_host, sender and at least one recipient."
        )
    if not isinstance(recipients, list) or not all(isinstance(item, str) and item for item in recipients):
        raise InvalidParameterValueException("Recipients must be a list of e-mail addresses.")
    if isinstance(smtp_port, bool) or not isinstance(smtp_port, int) or not 0 < smtp_port < 65536:
        raise InvalidParameterValueException(f"SMTP port {smtp_port!r} is out of range 1-65535.")
    return {
        "SmtpHost": smtp_host,
        "SmtpPort": smtp_port,
        "Sender": sender,
        "Recipients": list(recipients),
        "Username": username,
        "StartTls": bool(starttls),
    }


def sink_to_aws(row: NotificationSink) -> dict[str, Any]:
    """Return a sink as the API shows it: its settings and whether it has a secret, never the secret."""
    return {
        "SinkName": row.name,
        "SinkArn": row.arn,
        "SinkType": row.sink_type,
        "Settings": dict(row.settings),
        "HasSecret": row.wrapped_secret is not None,
        "FailuresOnly": row.failures_only,
        "CreationDate": row.creation_date,
    }


def _wrap(context: ServiceContext, name: str, secret: str | None) -> str | None:
    if secret is None or secret == "":
        return None
    if not isinstance(secret, str):
        raise InvalidParameterValueException("A sink's secret must be a string.")
    return context.master_secret.wrap(secret.encode(), secret_purpose(name))


def _check_name(name: Any) -> None:
    if (
        not isinstance(name, str)
        or not name
        or len(name) > 64
        or not name.replace("-", "").replace("_", "").isalnum()
        or not name.isascii()
    ):
        raise InvalidParameterValueException(
            f"Sink name {name!r} is not valid: use 1 to 64 letters, digits, hyphens and underscores."
        )


def _check_flag(value: Any, member: str) -> None:
    if not isinstance(value, bool):
        raise InvalidParameterValueException(f"{member} must be true or false, got {value!r}.")
