"""Operator commands over notifications (backvault extension API).

``backvault notifications sinks create|list|describe|update|delete``, ``backvault notifications
deliveries`` and ``backvault vaults notifications set|show|delete``. A sink's secret (HMAC key or
SMTP password) is read from an environment variable of this process (``--secret-env``) or from a
hidden prompt / standard input (``--secret-prompt``), never from the command line, and is sent
only in the signed request body.
"""

from __future__ import annotations

import os
import sys
from getpass import getpass
from typing import Annotated, Any

import typer

from backvault.cli.api_client import path_segment
from backvault.cli.common import fail
from backvault.cli.operator_output import (
    EndpointOption,
    JsonOption,
    ProfileOption,
    api_errors,
    call_extension,
    connect,
    emit_json,
    print_table,
    report,
)

notifications_app = typer.Typer(
    help="Notification sinks and deliveries (backvault extension API).", no_args_is_help=True
)
sinks_app = typer.Typer(help="Where vault events go: webhook, Slack or e-mail.", no_args_is_help=True)
vault_notifications_app = typer.Typer(
    help="A vault's notification settings: sink, events, failures only.", no_args_is_help=True
)

SINKS_PATH = "/backvault/notification-sinks"
DELIVERIES_PATH = "/backvault/notification-deliveries"
DELIVERY_STATUSES = ("PENDING", "DELIVERED", "FAILED")

SecretEnvOption = Annotated[
    str | None,
    typer.Option(
        "--secret-env",
        help="Environment variable of THIS process holding the HMAC key / SMTP password.",
        show_default=False,
    ),
]
SecretPromptOption = Annotated[
    bool,
    typer.Option(
        "--secret-prompt",
        help="Read the HMAC key / SMTP password from a hidden prompt (or the first line of stdin).",
    ),
]
UrlOption = Annotated[str | None, typer.Option("--url", help="Webhook or Slack URL.", show_default=False)]
SmtpHostOption = Annotated[
    str | None, typer.Option("--smtp-host", help="SMTP server (email).", show_default=False)
]
SmtpPortOption = Annotated[
    int | None, typer.Option("--smtp-port", help="SMTP port (default 25).", show_default=False)
]
SenderOption = Annotated[
    str | None, typer.Option("--sender", help="From address (email).", show_default=False)
]
RecipientOption = Annotated[
    list[str] | None, typer.Option("--recipient", help="To address (email, repeatable).")
]
UsernameOption = Annotated[
    str | None, typer.Option("--username", help="SMTP login (email).", show_default=False)
]
StartTlsOption = Annotated[
    bool | None,
    typer.Option("--starttls/--no-starttls", help="Use STARTTLS (email).", show_default=False),
]


notifications_app.add_typer(sinks_app, name="sinks")


def register(app: typer.Typer, vaults_app: typer.Typer) -> None:
    """Add ``notifications`` to the app and ``notifications`` to ``vaults``."""
    app.add_typer(notifications_app, name="notifications")
    # vaults_app is one module-level object: tests build several apps, so add the group once.
    if not any(group.typer_instance is vault_notifications_app for group in vaults_app.registered_groups):
        vaults_app.add_typer(vault_notifications_app, name="notifications")


# --- sinks ------------------------------------------------------------------------------------------


def _read_secret(secret_env: str | None, secret_prompt: bool) -> str | None:
    """The sink's secret from --secret-env or --secret-prompt (None when neither is given)."""
    if secret_env and secret_prompt:
        fail("give the secret one way: --secret-env or --secret-prompt")
    if secret_env:
        value = os.environ.get(secret_env)
        if not value:
            fail(f"--secret-env: the environment variable {secret_env} is not set or empty")
        return value
    if secret_prompt:
        if sys.stdin.isatty():
            value = getpass("Sink secret (HMAC key or SMTP password): ").strip()
        else:
            value = sys.stdin.readline().strip()
        if not value:
            fail("no secret given at the prompt or on standard input")
        return value
    return None


def _settings(
    url: str | None,
    smtp_host: str | None,
    smtp_port: int | None,
    sender: str | None,
    recipients: list[str] | None,
    username: str | None,
    starttls: bool | None,
) -> dict[str, Any]:
    given = {
        "Url": url,
        "SmtpHost": smtp_host,
        "SmtpPort": smtp_port,
        "Sender": sender,
        "Recipients": recipients or None,
        "Username": username,
        "StartTls": starttls,
    }
    return {member: value for member, value in given.items() if value is not None}


@sinks_app.command("create")
def create_sink(
    name: Annotated[str, typer.Argument(help="Sink name: letters, digits, hyphens, underscores.")],
    sink_type: Annotated[str, typer.Option("--type", help="webhook, slack or email.")],
    url: UrlOption = None,
    smtp_host: SmtpHostOption = None,
    smtp_port: SmtpPortOption = None,
    sender: SenderOption = None,
    recipients: RecipientOption = None,
    username: UsernameOption = None,
    starttls: StartTlsOption = None,
    secret_env: SecretEnvOption = None,
    secret_prompt: SecretPromptOption = False,
    failures_only: Annotated[
        bool, typer.Option("--failures-only", help="Deliver only failure events to this sink.")
    ] = False,
    as_json: JsonOption = False,
    profile: ProfileOption = None,
    endpoint_url: EndpointOption = None,
) -> None:
    """Register a notification sink; webhooks are signed with the secret (HMAC-SHA256) when given."""
    body: dict[str, Any] = {
        "SinkName": name,
        "SinkType": sink_type,
        "FailuresOnly": failures_only,
        **_settings(url, smtp_host, smtp_port, sender, recipients, username, starttls),
    }
    secret = _read_secret(secret_env, secret_prompt)
    if secret is not None:
        body["Secret"] = secret
    answer = call_extension(profile, endpoint_url, "POST", SINKS_PATH, body)
    report(answer, as_json, message=f"created {answer.get('SinkType')} sink {name} ({answer.get('SinkArn')})")


@sinks_app.command("update")
def update_sink(
    name: str,
    sink_type: Annotated[
        str | None, typer.Option("--type", help="webhook, slack or email.", show_default=False)
    ] = None,
    url: UrlOption = None,
    smtp_host: SmtpHostOption = None,
    smtp_port: SmtpPortOption = None,
    sender: SenderOption = None,
    recipients: RecipientOption = None,
    username: UsernameOption = None,
    starttls: StartTlsOption = None,
    secret_env: SecretEnvOption = None,
    secret_prompt: SecretPromptOption = False,
    clear_secret: Annotated[bool, typer.Option("--clear-secret", help="Remove the sink's secret.")] = False,
    failures_only: Annotated[
        bool | None,
        typer.Option(
            "--failures-only/--all-events", help="Deliver only failures, or every event.", show_default=False
        ),
    ] = None,
    as_json: JsonOption = False,
    profile: ProfileOption = None,
    endpoint_url: EndpointOption = None,
) -> None:
    """Change a sink: settings, secret (rotate with --secret-env/--secret-prompt) or failures only."""
    body: dict[str, Any] = _settings(url, smtp_host, smtp_port, sender, recipients, username, starttls)
    if sink_type:
        body["SinkType"] = sink_type
    if failures_only is not None:
        body["FailuresOnly"] = failures_only
    secret = _read_secret(secret_env, secret_prompt)
    if secret is not None:
        body["Secret"] = secret
    if clear_secret:
        body["ClearSecret"] = True
    answer = call_extension(profile, endpoint_url, "PUT", f"{SINKS_PATH}/{path_segment(name)}", body)
    report(answer, as_json, message=f"updated sink {name}")


@sinks_app.command("list")
def list_sinks(
    as_json: JsonOption = False, profile: ProfileOption = None, endpoint_url: EndpointOption = None
) -> None:
    """List notification sinks (never their secrets)."""
    client = connect(profile, endpoint_url)
    with api_errors():
        sinks = client.extension_collect(SINKS_PATH, "Sinks")
    if as_json:
        emit_json({"Sinks": sinks})
        return
    print_table(
        ("Name", "Type", "Target", "Signed", "FailuresOnly", "Arn"),
        [
            (
                sink["SinkName"],
                sink.get("SinkType"),
                _target(sink.get("Settings") or {}),
                sink.get("HasSecret"),
                sink.get("FailuresOnly"),
                sink.get("SinkArn"),
            )
            for sink in sinks
        ],
        no_wrap=("Name", "Arn"),
        empty="no notification sinks; add one with 'backvault notifications sinks create'",
    )


def _target(settings: dict[str, Any]) -> str:
    if settings.get("Url"):
        return str(settings["Url"])
    recipients = ", ".join(settings.get("Recipients") or [])
    return f"{recipients} via {settings.get('SmtpHost')}:{settings.get('SmtpPort')}"


@sinks_app.command("describe")
def describe_sink(
    name: str, as_json: JsonOption = False, profile: ProfileOption = None, endpoint_url: EndpointOption = None
) -> None:
    """Show one notification sink."""
    answer = call_extension(profile, endpoint_url, "GET", f"{SINKS_PATH}/{path_segment(name)}")
    report(answer, as_json, title=f"sink {name}")


@sinks_app.command("delete")
def delete_sink(
    name: str, as_json: JsonOption = False, profile: ProfileOption = None, endpoint_url: EndpointOption = None
) -> None:
    """Delete a notification sink and its delivery history."""
    call_extension(profile, endpoint_url, "DELETE", f"{SINKS_PATH}/{path_segment(name)}")
    report({"SinkName": name, "Deleted": True}, as_json, message=f"deleted sink {name}")


# --- deliveries -------------------------------------------------------------------------------------


@notifications_app.command("deliveries")
def list_deliveries(
    sink: Annotated[
        str | None, typer.Option("--sink", help="Only deliveries to this sink.", show_default=False)
    ] = None,
    status: Annotated[
        str | None,
        typer.Option("--status", help="Only PENDING, DELIVERED or FAILED deliveries.", show_default=False),
    ] = None,
    as_json: JsonOption = False,
    profile: ProfileOption = None,
    endpoint_url: EndpointOption = None,
) -> None:
    """List deliveries, newest first: event, sink, status, attempts, last error, next attempt."""
    if status is not None:
        status = status.upper()
        if status not in DELIVERY_STATUSES:
            fail(f"--status {status!r}: use one of {', '.join(DELIVERY_STATUSES)}")
    client = connect(profile, endpoint_url)
    with api_errors():
        deliveries = client.extension_collect(
            DELIVERIES_PATH, "Deliveries", {"sinkName": sink, "status": status}
        )
    if as_json:
        emit_json({"Deliveries": deliveries})
        return
    print_table(
        ("Id", "Event", "Vault", "Sink", "Status", "Attempts", "LastError", "NextAttempt", "Created"),
        [
            (
                item["DeliveryId"],
                item.get("EventType"),
                item.get("BackupVaultName"),
                item.get("SinkName"),
                item.get("Status"),
                item.get("AttemptCount"),
                item.get("LastError"),
                item.get("NextAttemptDate"),
                item.get("CreationDate"),
            )
            for item in deliveries
        ],
        no_wrap=("Id", "Event"),
        empty="no notification deliveries",
    )


# --- a vault's settings -----------------------------------------------------------------------------


def _vault_path(name: str) -> str:
    return f"/backvault/vaults/{path_segment(name)}/notifications"


@vault_notifications_app.command("set")
def set_vault_notifications(
    vault: Annotated[str, typer.Argument(help="The backup vault.")],
    sink: Annotated[str, typer.Option("--sink", help="The notification sink's name.")],
    events: Annotated[
        str, typer.Option("--events", help="Comma-separated events, e.g. BACKUP_JOB_FAILED,COPY_JOB_FAILED.")
    ],
    failures_only: Annotated[
        bool, typer.Option("--failures-only", help="Of those events, deliver only failures.")
    ] = False,
    as_json: JsonOption = False,
    profile: ProfileOption = None,
    endpoint_url: EndpointOption = None,
) -> None:
    """Send some of a vault's events to a sink (replaces the vault's notification settings)."""
    names = [item.strip().upper() for item in events.split(",") if item.strip()]
    if not names:
        fail("--events: name at least one event, e.g. BACKUP_JOB_FAILED")
    body = {"SinkName": sink, "BackupVaultEvents": names, "FailuresOnly": failures_only}
    answer = call_extension(profile, endpoint_url, "PUT", _vault_path(vault), body)
    only = " (failures only)" if failures_only else ""
    report(answer, as_json, message=f"vault {vault}: {', '.join(names)} go to sink {sink}{only}")


@vault_notifications_app.command("show")
def show_vault_notifications(
    vault: str,
    as_json: JsonOption = False,
    profile: ProfileOption = None,
    endpoint_url: EndpointOption = None,
) -> None:
    """Show a vault's notification settings."""
    answer = call_extension(profile, endpoint_url, "GET", _vault_path(vault))
    report(answer, as_json, title=f"notifications of vault {vault}")


@vault_notifications_app.command("delete")
def delete_vault_notifications(
    vault: str,
    as_json: JsonOption = False,
    profile: ProfileOption = None,
    endpoint_url: EndpointOption = None,
) -> None:
    """Stop a vault's notifications."""
    call_extension(profile, endpoint_url, "DELETE", _vault_path(vault))
    report({"BackupVaultName": vault, "Deleted": True}, as_json, message=f"vault {vault}: notifications off")
