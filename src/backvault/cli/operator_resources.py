"""Operator commands over what is backed up: ``recovery-points``, ``resources`` and ``endpoints``.

Recovery points and protected resources are AWS Backup operations; source endpoints, discovery and
the list of every discovered resource are backvault's ``/backvault/...`` extension routes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from backvault.cli.api_client import path_segment
from backvault.cli.common import fail
from backvault.cli.operator_output import (
    EndpointOption,
    JsonOption,
    ProfileOption,
    api_errors,
    call_api,
    call_extension,
    connect,
    emit_json,
    find_point_vault,
    parse_pairs,
    print_table,
    read_json_document,
    report,
    say,
    size,
    unwrap,
)

points_app = typer.Typer(help="Recovery points (AWS Backup API).", no_args_is_help=True)
resources_app = typer.Typer(help="Protected and discovered resources.", no_args_is_help=True)
endpoints_app = typer.Typer(
    help="Source endpoints and discovery (backvault extension API).", no_args_is_help=True
)

VaultOption = Annotated[
    str | None,
    typer.Option("--vault", help="The point's vault (default: searched for).", show_default=False),
]


def register(app: typer.Typer) -> None:
    """Add ``recovery-points``, ``resources`` and ``endpoints`` to the app."""
    app.add_typer(points_app, name="recovery-points")
    app.add_typer(resources_app, name="resources")
    app.add_typer(endpoints_app, name="endpoints")


# --- recovery points ---------------------------------------------------------------------------------


@points_app.command("list")
def list_points(
    vault: Annotated[
        str | None, typer.Option("--vault", help="Points in this vault.", show_default=False)
    ] = None,
    resource_arn: Annotated[
        str | None, typer.Option("--resource", help="Points of this resource ARN.", show_default=False)
    ] = None,
    as_json: JsonOption = False,
    profile: ProfileOption = None,
    endpoint_url: EndpointOption = None,
) -> None:
    """List recovery points of a vault (--vault) or of a resource (--resource), or both filters at once."""
    if not vault and not resource_arn:
        fail("say which recovery points: --vault NAME or --resource ARN")
    client = connect(profile, endpoint_url)
    with api_errors():
        if vault:
            filters = {"ByResourceArn": resource_arn} if resource_arn else {}
            points = client.collect(
                "list_recovery_points_by_backup_vault", "RecoveryPoints", BackupVaultName=vault, **filters
            )
        else:
            points = client.collect(
                "list_recovery_points_by_resource", "RecoveryPoints", ResourceArn=resource_arn
            )
    if as_json:
        emit_json({"RecoveryPoints": points})
        return
    print_table(
        ("RecoveryPointArn", "Resource", "Vault", "Status", "Created", "Size", "DeleteAt", "Storage"),
        [
            (
                point["RecoveryPointArn"],
                point.get("ResourceName") or point.get("ResourceArn") or resource_arn,
                point.get("BackupVaultName"),
                point.get("Status"),
                point.get("CreationDate"),
                size(point.get("BackupSizeInBytes") or point.get("BackupSizeBytes")),
                (point.get("CalculatedLifecycle") or {}).get("DeleteAt"),
                point.get("StorageClass"),
            )
            for point in points
        ],
        no_wrap=("RecoveryPointArn",),
        empty="no recovery points",
    )


@points_app.command("describe")
def describe_point(
    recovery_point_arn: Annotated[str, typer.Argument(help="The recovery point's ARN.")],
    vault: VaultOption = None,
    as_json: JsonOption = False,
    profile: ProfileOption = None,
    endpoint_url: EndpointOption = None,
) -> None:
    """Show one recovery point."""
    client = connect(profile, endpoint_url)
    with api_errors():
        vault_name = vault or find_point_vault(client, recovery_point_arn)
        answer = client.call(
            "describe_recovery_point", BackupVaultName=vault_name, RecoveryPointArn=recovery_point_arn
        )
    report(answer, as_json, title="recovery point")


@points_app.command("delete")
def delete_point(
    recovery_point_arn: Annotated[str, typer.Argument(help="The recovery point's ARN.")],
    vault: VaultOption = None,
    as_json: JsonOption = False,
    profile: ProfileOption = None,
    endpoint_url: EndpointOption = None,
) -> None:
    """Delete a recovery point (refused under a vault lock's minimum retention or a legal hold)."""
    client = connect(profile, endpoint_url)
    with api_errors():
        vault_name = vault or find_point_vault(client, recovery_point_arn)
        client.call("delete_recovery_point", BackupVaultName=vault_name, RecoveryPointArn=recovery_point_arn)
    report(
        {"RecoveryPointArn": recovery_point_arn, "BackupVaultName": vault_name, "Deleted": True},
        as_json,
        message=f"deleted recovery point {recovery_point_arn} from vault {vault_name}",
    )


# --- resources --------------------------------------------------------------------------------------


@resources_app.command("list")
def list_resources(
    protected: Annotated[
        bool,
        typer.Option(
            "--protected", help="Only resources with a recovery point (AWS ListProtectedResources)."
        ),
    ] = False,
    endpoint: Annotated[
        str | None,
        typer.Option("--endpoint", help="Only resources behind this endpoint.", show_default=False),
    ] = None,
    resource_type: Annotated[
        str | None,
        typer.Option("--type", help="Only this resource type (Filesystem...).", show_default=False),
    ] = None,
    as_json: JsonOption = False,
    profile: ProfileOption = None,
    endpoint_url: EndpointOption = None,
) -> None:
    """List every discovered resource with its tags and last backup (or only protected ones)."""
    client = connect(profile, endpoint_url)
    with api_errors():
        if protected:
            resources = client.collect("list_protected_resources", "Results")
            resources = [
                item
                for item in resources
                if resource_type is None or item.get("ResourceType") == resource_type
            ]
        else:
            query = {"endpointName": endpoint, "resourceType": resource_type}
            resources = client.extension_collect("/backvault/resources", "Resources", query)
    if as_json:
        emit_json({"Results" if protected else "Resources": resources})
        return
    print_table(
        ("ResourceArn", "Type", "Name", "Endpoint", "Tags", "LastBackup", "Vanished"),
        [
            (
                item["ResourceArn"],
                item.get("ResourceType"),
                item.get("ResourceName"),
                item.get("EndpointName"),
                item.get("NativeTags"),
                item.get("LastBackupTime"),
                item.get("Vanished"),
            )
            for item in resources
        ],
        no_wrap=("ResourceArn",),
        empty="no resources; register an endpoint and run 'backvault endpoints discover'",
    )


@resources_app.command("describe")
def describe_resource(
    resource_arn: Annotated[str, typer.Argument(help="The resource's ARN.")],
    as_json: JsonOption = False,
    profile: ProfileOption = None,
    endpoint_url: EndpointOption = None,
) -> None:
    """Show one protected resource: its last backup and last restore."""
    answer = call_api(profile, endpoint_url, "describe_protected_resource", ResourceArn=resource_arn)
    report(answer, as_json, title="resource")


# --- endpoints --------------------------------------------------------------------------------------


@endpoints_app.command("list")
def list_endpoints(
    endpoint_type: Annotated[
        str | None, typer.Option("--type", help="Only endpoints of this type.", show_default=False)
    ] = None,
    as_json: JsonOption = False,
    profile: ProfileOption = None,
    endpoint_url: EndpointOption = None,
) -> None:
    """List source endpoints (never their credentials)."""
    client = connect(profile, endpoint_url)
    with api_errors():
        endpoints = client.extension_collect(
            "/backvault/endpoints", "SourceEndpoints", {"endpointType": endpoint_type}
        )
    if as_json:
        emit_json({"SourceEndpoints": endpoints})
        return
    print_table(
        ("Name", "Type", "Connection", "Credentials", "DefaultTags", "LastDiscovery"),
        [
            (
                item["EndpointName"],
                item.get("EndpointType"),
                item.get("Connection"),
                item.get("CredentialsReference") or item.get("CredentialsType"),
                item.get("DefaultTags"),
                item.get("LastDiscoveryDate"),
            )
            for item in endpoints
        ],
        no_wrap=("Name",),
        empty="no source endpoints; add one with 'backvault endpoints register'",
    )


@endpoints_app.command("describe")
def describe_endpoint(
    name: str, as_json: JsonOption = False, profile: ProfileOption = None, endpoint_url: EndpointOption = None
) -> None:
    """Show one source endpoint."""
    answer = call_extension(profile, endpoint_url, "GET", f"/backvault/endpoints/{path_segment(name)}")
    report(answer, as_json, title=f"endpoint {name}")


@endpoints_app.command("register")
def register_endpoint(
    name: Annotated[str | None, typer.Argument(help="Endpoint name (or EndpointName in -f).")] = None,
    endpoint_type: Annotated[
        str | None,
        typer.Option(
            "--type", help="Filesystem, PostgreSQL, MySQL, SQLite, Redis, S3 or DynamoDB.", show_default=False
        ),
    ] = None,
    connection: Annotated[
        list[str] | None,
        typer.Option(
            "--connection",
            help="KEY=VALUE connection setting (repeatable); a JSON value (5432, true) is taken as such.",
        ),
    ] = None,
    tags: Annotated[
        list[str] | None, typer.Option("--tag", help="KEY=VALUE default tag (repeatable).")
    ] = None,
    credentials_env: Annotated[
        str | None,
        typer.Option(
            "--credentials-env",
            help="Name of an environment variable of the SERVER holding the credentials.",
            show_default=False,
        ),
    ] = None,
    credentials_file: Annotated[
        Path | None,
        typer.Option(
            "--credentials-file",
            help="File with the credentials (a JSON object, or a password); - for standard input. Stored "
            "encrypted by the server.",
            show_default=False,
        ),
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "-f", "--file", help="The whole request as JSON (EndpointName, EndpointType, Connection...)."
        ),
    ] = None,
    as_json: JsonOption = False,
    profile: ProfileOption = None,
    endpoint_url: EndpointOption = None,
) -> None:
    """Register a source endpoint; the server checks it can reach it."""
    request: dict[str, Any] = (
        unwrap(read_json_document(file, "endpoint"), "Endpoint", "endpoint", file) if file else {}
    )
    if name:
        request["EndpointName"] = name
    if endpoint_type:
        request["EndpointType"] = endpoint_type
    if connection:
        request["Connection"] = {**request.get("Connection", {}), **_typed_pairs(connection)}
    if tags:
        request["DefaultTags"] = {**request.get("DefaultTags", {}), **parse_pairs(tags, "--tag")}
    if credentials_env and credentials_file:
        fail("give the credentials one way: --credentials-env or --credentials-file")
    if credentials_env:
        request["Credentials"] = f"env:{credentials_env}"
    elif credentials_file:
        request["Credentials"] = _read_credentials(credentials_file)
    for member, option in (("EndpointName", "NAME"), ("EndpointType", "--type")):
        if not request.get(member):
            fail(f"missing {member}: pass {option} (or put it in the -f file)")
    request.setdefault("Connection", {})
    answer = call_extension(profile, endpoint_url, "POST", "/backvault/endpoints", request)
    report(
        answer,
        as_json,
        message=f"registered {answer.get('EndpointType')} endpoint {answer.get('EndpointName')}",
    )


def _typed_pairs(values: list[str]) -> dict[str, Any]:
    typed: dict[str, Any] = {}
    for key, value in parse_pairs(values, "--connection").items():
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        # Only scalars are taken as JSON: "[1]" or "{}" stay text unless given in -f.
        typed[key] = parsed if isinstance(parsed, int | float | bool) else value
    return typed


def _read_credentials(path: Path) -> Any:
    try:
        content = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    except OSError as error:
        fail(f"cannot read the credentials file {path}: {error.strerror}")
    content = content.strip()
    try:
        document = json.loads(content)
    except ValueError:
        return {"password": content}
    if isinstance(document, dict):
        return document
    return {"password": content}


@endpoints_app.command("delete")
def delete_endpoint(
    name: str, as_json: JsonOption = False, profile: ProfileOption = None, endpoint_url: EndpointOption = None
) -> None:
    """Delete a source endpoint (its resources' recovery points stay)."""
    call_extension(profile, endpoint_url, "DELETE", f"/backvault/endpoints/{path_segment(name)}")
    report({"EndpointName": name, "Deleted": True}, as_json, message=f"deleted endpoint {name}")


@endpoints_app.command("discover")
def discover(
    name: Annotated[str | None, typer.Argument(help="Only this endpoint (default: every endpoint).")] = None,
    as_json: JsonOption = False,
    profile: ProfileOption = None,
    endpoint_url: EndpointOption = None,
) -> None:
    """Discover the resources behind one endpoint or all of them now."""
    client = connect(profile, endpoint_url)
    with api_errors():
        if name:
            answer = client.extension("POST", f"/backvault/endpoints/{path_segment(name)}/discover")
            results, errors = [answer], []
        else:
            answer = client.extension("POST", "/backvault/discovery")
            results, errors = answer.get("Endpoints", []), answer.get("Errors", [])
    if as_json:
        emit_json(answer)
    else:
        print_table(
            ("Endpoint", "Resources", "New", "Vanished"),
            [
                (
                    result.get("EndpointName"),
                    len(result.get("ResourceArns") or []),
                    result.get("NewResourceArns"),
                    result.get("VanishedResourceArns"),
                )
                for result in results
            ],
            no_wrap=("Endpoint",),
            empty="no endpoints to discover",
        )
        for error in errors:
            name, code, message = error.get("EndpointName"), error.get("ErrorCode"), error.get("Message")
            say(f"discovery of {name} failed: {code}: {message}")
    if errors:
        raise typer.Exit(1)
