"""Notification extension routes: sinks, deliveries with their attempts, a vault's notification settings.

Signed and authorised like the other extension routes. A sink's routes act on the sink's own ARN
(``arn:aws:sns:REGION:ACCOUNT:NAME``, the "topic" vaults subscribe); the vault settings act on the
vault's ARN, so a vault's access policy applies too. A sink's secret (HMAC key or SMTP password)
travels only in the signed body of create and update, is stored wrapped, and no answer carries it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Query, Request
from pydantic import Field
from starlette.responses import Response

from backvault.api.extension_routes import RequestModel, ResourceOf, call_service, guard, json_answer, members
from backvault.api.resource_arns import operation_resource_arns
from backvault.control import notification_sinks, notifications, vault_settings

if TYPE_CHECKING:
    from backvault.api.app import ApiState

TAG_SINKS = "notifications"


class _SinkSettings(RequestModel):
    Url: str | None = Field(default=None, description="Webhook or Slack incoming-webhook URL (http/https).")
    SmtpHost: str | None = Field(default=None, description="SMTP server of an email sink.")
    SmtpPort: int | None = Field(default=None, description="SMTP port (default 25).")
    Sender: str | None = Field(default=None, description="From address of an email sink.")
    Recipients: list[str] | None = Field(default=None, description="To addresses of an email sink.")
    Username: str | None = Field(default=None, description="SMTP login (its password is the Secret).")
    StartTls: bool | None = Field(default=None, description="Use STARTTLS with the SMTP server.")
    Secret: str | None = Field(
        default=None,
        description="HMAC key of a webhook or SMTP password; stored encrypted, never returned.",
        repr=False,
    )
    FailuresOnly: bool | None = Field(default=None, description="Deliver only failure events.")


class CreateNotificationSinkRequest(_SinkSettings):
    """A sink to register: a signed JSON webhook, a Slack-compatible webhook or SMTP e-mail."""

    SinkName: str = Field(description="Name: 1-64 letters, digits, hyphens and underscores.")
    SinkType: str = Field(description="'webhook', 'slack' or 'email'.")


class UpdateNotificationSinkRequest(_SinkSettings):
    """Changes to a sink; absent members stay as they are."""

    SinkType: str | None = None
    ClearSecret: bool | None = Field(default=None, description="Remove the sink's secret.")


class PutVaultNotificationSettingsRequest(RequestModel):
    """Which of the vault's events go to which sink, optionally failures only."""

    BackupVaultEvents: list[str] = Field(description="AWS BackupVaultEvent names.")
    SinkName: str | None = Field(default=None, description="The sink, by name (or give SNSTopicArn).")
    SNSTopicArn: str | None = Field(default=None, description="The sink, by its ARN.")
    FailuresOnly: bool = Field(default=False, description="Deliver only failure events of this vault.")


def add_notification_routes(router: APIRouter, state: ApiState) -> None:
    """Add the notification routes to the extension router."""
    context = state.context

    def sink(request: Request) -> str:
        return notification_sinks.sink_arn(context, request.path_params.get("sink_name", ""))

    def vault(request: Request) -> str:
        name = request.path_params.get("vault_name", "")
        arns = operation_resource_arns(context, "PutBackupVaultNotifications", {"BackupVaultName": name})
        return arns[0] if arns else "*"

    def sink_filter(request: Request) -> str:
        name = request.query_params.get("sinkName")
        return notification_sinks.sink_arn(context, name) if name else "*"

    _sink_routes(router, state, sink)
    _delivery_routes(router, state, sink_filter)
    _vault_routes(router, state, vault)


def _sink_routes(router: APIRouter, state: ApiState, sink: ResourceOf) -> None:
    context = state.context

    @router.get(
        "/notification-sinks",
        summary="List notification sinks (never their secrets)",
        tags=[TAG_SINKS],
        dependencies=[guard("ListNotificationSinks")],
    )
    async def list_sinks(
        next_token: str | None = Query(default=None, alias="nextToken"),
        max_results: int | None = Query(default=None, alias="maxResults"),
    ) -> Response:
        listing = notification_sinks.list_notification_sinks
        result = await call_service(listing, context, next_token=next_token, max_results=max_results)
        return json_answer(result)

    @router.post(
        "/notification-sinks",
        summary="Register a notification sink",
        tags=[TAG_SINKS],
        dependencies=[guard("CreateNotificationSink")],
    )
    async def create_sink(request: CreateNotificationSinkRequest) -> Response:
        arguments = _sink_arguments(request)
        name, sink_type = arguments.pop("sink_name"), arguments.pop("sink_type")
        create = notification_sinks.create_notification_sink
        return json_answer(await call_service(create, context, name, sink_type, **arguments))

    @router.get(
        "/notification-sinks/{sink_name}",
        summary="Describe a notification sink",
        tags=[TAG_SINKS],
        dependencies=[guard("DescribeNotificationSink", sink)],
    )
    async def describe_sink(sink_name: str) -> Response:
        return json_answer(
            await call_service(notification_sinks.describe_notification_sink, context, sink_name)
        )

    @router.put(
        "/notification-sinks/{sink_name}",
        summary="Update a notification sink (settings, secret, failures only)",
        tags=[TAG_SINKS],
        dependencies=[guard("UpdateNotificationSink", sink)],
    )
    async def update_sink(sink_name: str, request: UpdateNotificationSinkRequest) -> Response:
        arguments = _sink_arguments(request)
        arguments["clear_secret"] = bool(arguments.pop("clear_secret", False))
        return json_answer(
            await call_service(notification_sinks.update_notification_sink, context, sink_name, **arguments)
        )

    @router.delete(
        "/notification-sinks/{sink_name}",
        summary="Delete a notification sink and its delivery history",
        tags=[TAG_SINKS],
        dependencies=[guard("DeleteNotificationSink", sink)],
    )
    async def delete_sink(sink_name: str) -> Response:
        delete = notification_sinks.delete_notification_sink
        return json_answer(await call_service(delete, context, sink_name))


def _sink_arguments(request: _SinkSettings) -> dict[str, Any]:
    """The request's members as the sink services' keyword arguments (StartTls -> starttls)."""
    arguments = members(request)
    if "start_tls" in arguments:
        arguments["starttls"] = arguments.pop("start_tls")
    return arguments


def _delivery_routes(router: APIRouter, state: ApiState, sink_filter: ResourceOf) -> None:
    context = state.context

    @router.get(
        "/notification-deliveries",
        summary="List notification deliveries with every attempt, newest first",
        tags=[TAG_SINKS],
        dependencies=[guard("ListNotificationDeliveries", sink_filter)],
    )
    async def list_deliveries(
        sink_name: str | None = Query(default=None, alias="sinkName"),
        status: str | None = Query(default=None, alias="status"),
        next_token: str | None = Query(default=None, alias="nextToken"),
        max_results: int | None = Query(default=None, alias="maxResults"),
    ) -> Response:
        result = await call_service(
            notifications.list_notification_deliveries,
            context,
            sink_name=sink_name,
            status=status,
            next_token=next_token,
            max_results=max_results,
        )
        return json_answer(result)


def _vault_routes(router: APIRouter, state: ApiState, vault: ResourceOf) -> None:
    context = state.context

    @router.get(
        "/vaults/{vault_name}/notifications",
        summary="A vault's notification settings, with FailuresOnly and the sink's name",
        tags=[TAG_SINKS],
        dependencies=[guard("GetBackupVaultNotificationSettings", vault)],
    )
    async def get_settings(vault_name: str) -> Response:
        return json_answer(
            await call_service(vault_settings.get_backup_vault_notification_settings, context, vault_name)
        )

    @router.put(
        "/vaults/{vault_name}/notifications",
        summary="Set a vault's notification settings (replaces them)",
        tags=[TAG_SINKS],
        dependencies=[guard("PutBackupVaultNotificationSettings", vault)],
    )
    async def put_settings(vault_name: str, request: PutVaultNotificationSettingsRequest) -> Response:
        arguments = members(request)
        return json_answer(
            await call_service(
                vault_settings.put_backup_vault_notification_settings, context, vault_name, **arguments
            )
        )

    @router.delete(
        "/vaults/{vault_name}/notifications",
        summary="Remove a vault's notification settings",
        tags=[TAG_SINKS],
        dependencies=[guard("DeleteBackupVaultNotificationSettings", vault)],
    )
    async def delete_settings(vault_name: str) -> Response:
        return json_answer(
            await call_service(vault_settings.delete_backup_vault_notifications, context, vault_name)
        )
