"""Operator commands, clients of the backvault API: ``configure``, ``vaults``, ``plans``, ``selections``.

``register(app)`` adds every operator command to the ``backvault`` app (jobs, recovery points,
resources, endpoints, backup-now, restore and status come from the sibling ``operator_*`` modules).
The commands hold no logic beyond calling the API and rendering its answers: tables on a terminal,
``--json`` for scripts, and on a refusal the AWS error code and message with exit code 1.
"""

from __future__ import annotations

import os
import sys
from getpass import getpass
from pathlib import Path
from typing import Annotated, Any

import typer

from backvault.cli import client_config
from backvault.cli.client_config import ConfigError, validate_endpoint_url, validate_region
from backvault.cli.common import fail
from backvault.cli.operator_output import (
    EndpointOption,
    JsonOption,
    ProfileOption,
    api_errors,
    call_api,
    connect,
    default_role_arn,
    emit_json,
    parse_pairs,
    print_fields,
    print_table,
    read_json_document,
    report,
    say,
    unwrap,
)

vaults_app = typer.Typer(help="Backup vaults (AWS Backup API).", no_args_is_help=True)
plans_app = typer.Typer(help="Backup plans (AWS Backup API).", no_args_is_help=True)
selections_app = typer.Typer(help="Backup selections of a plan (AWS Backup API).", no_args_is_help=True)

FileOption = Annotated[
    Path, typer.Option("-f", "--file", help="JSON document (a file, or - for standard input).")
]


def register(app: typer.Typer) -> None:
    """Add the operator commands to the ``backvault`` app."""
    from backvault.cli import operator_jobs, operator_notifications, operator_resources, operator_status

    app.command("configure")(configure)
    app.add_typer(vaults_app, name="vaults")
    app.add_typer(plans_app, name="plans")
    app.add_typer(selections_app, name="selections")
    operator_jobs.register(app)
    operator_resources.register(app)
    operator_status.register(app)
    operator_notifications.register(app, vaults_app)  # notifications; vaults notifications


# --- configure --------------------------------------------------------------------------------------


def configure(
    profile: Annotated[
        str | None,
        typer.Option(
            "--profile",
            help="The profile to write (default $BACKVAULT_PROFILE or 'default').",
            show_default=False,
        ),
    ] = None,
    endpoint_url: Annotated[
        str | None, typer.Option("--endpoint-url", help="The backvault API URL.", show_default=False)
    ] = None,
    region: Annotated[
        str | None, typer.Option("--region", help="The server's signing region (default local).")
    ] = None,
    access_key_id: Annotated[
        str | None, typer.Option("--access-key-id", help="The access key id.", show_default=False)
    ] = None,
    list_profiles: Annotated[
        bool, typer.Option("--list", help="List the stored profiles (never their secrets) and stop.")
    ] = False,
) -> None:
    """Store a client profile; the secret access key is read from standard input or a prompt, never argv."""
    path = client_config.config_path()
    try:
        profiles = client_config.load_profiles(path)
        if list_profiles:
            _list_profiles(profiles, path)
            return
        profile = client_config.validate_profile_name(
            profile or os.environ.get(client_config.PROFILE_ENV) or client_config.DEFAULT_PROFILE
        )
        current = profiles.get(profile, {})
        values = {
            "endpoint_url": validate_endpoint_url(
                endpoint_url or current.get("endpoint_url") or _ask("API endpoint URL", "endpoint_url")
            ),
            "region": validate_region(region or current.get("region") or client_config.DEFAULT_REGION),
            "access_key_id": access_key_id
            or _ask("Access key id", "access_key_id", current.get("access_key_id")),
        }
        values["secret_access_key"] = _read_secret() or current.get("secret_access_key") or ""
        if not values["secret_access_key"]:
            fail(
                "no secret access key: type it at the prompt or pipe it on standard input "
                "(for example: backvault configure --access-key-id ID < secret-file)"
            )
        written = client_config.save_profile(profile, values, path)
    except ConfigError as error:
        fail(str(error))
    say(f"profile {profile!r} saved in {written} (endpoint {values['endpoint_url']})")


def _ask(prompt: str, key: str, default: str | None = None) -> str:
    if default:
        return default
    if not sys.stdin.isatty():
        fail(f"no {key.replace('_', ' ')}: pass --{key.replace('_', '-')}")
    answer: str = typer.prompt(prompt)
    return answer.strip()


def _read_secret() -> str:
    """The secret from a hidden prompt on a terminal, else the first line of standard input."""
    if sys.stdin.isatty():
        return getpass("Secret access key (empty keeps the stored one): ").strip()
    return sys.stdin.readline().strip()


def _list_profiles(profiles: dict[str, dict[str, str]], path: Path) -> None:
    rows = [
        (
            name,
            values.get("endpoint_url"),
            values.get("region", client_config.DEFAULT_REGION),
            values.get("access_key_id"),
            "stored" if values.get("secret_access_key") else "missing",
        )
        for name, values in sorted(profiles.items())
    ]
    print_table(
        ("Profile", "EndpointUrl", "Region", "AccessKeyId", "Secret"),
        rows,
        title=str(path),
        no_wrap=("AccessKeyId",),
        empty="no profiles; create one with 'backvault configure'",
    )


# --- vaults -----------------------------------------------------------------------------------------


@vaults_app.command("list")
def list_vaults(
    as_json: JsonOption = False, profile: ProfileOption = None, endpoint_url: EndpointOption = None
) -> None:
    """List backup vaults with their recovery point counts."""
    client = connect(profile, endpoint_url)
    with api_errors():
        vaults = client.collect("list_backup_vaults", "BackupVaultList")
    if as_json:
        emit_json({"BackupVaultList": vaults})
        return
    print_table(
        ("Name", "RecoveryPoints", "Locked", "Created", "Arn"),
        [
            (
                vault["BackupVaultName"],
                vault.get("NumberOfRecoveryPoints", 0),
                vault.get("Locked", False),
                vault.get("CreationDate"),
                vault.get("BackupVaultArn"),
            )
            for vault in vaults
        ],
        no_wrap=("Name", "Arn"),
        empty="no backup vaults; create one with 'backvault vaults create NAME'",
    )


@vaults_app.command("create")
def create_vault(
    name: Annotated[str, typer.Argument(help="Vault name: 2-50 letters, digits and hyphens.")],
    tags: Annotated[list[str] | None, typer.Option("--tag", help="KEY=VALUE vault tag (repeatable).")] = None,
    as_json: JsonOption = False,
    profile: ProfileOption = None,
    endpoint_url: EndpointOption = None,
) -> None:
    """Create a backup vault."""
    parameters: dict[str, Any] = {"BackupVaultName": name}
    if tags:
        parameters["BackupVaultTags"] = parse_pairs(tags, "--tag")
    answer = call_api(profile, endpoint_url, "create_backup_vault", **parameters)
    report(
        answer,
        as_json,
        message=f"created vault {answer.get('BackupVaultName', name)} ({answer.get('BackupVaultArn')})",
    )


@vaults_app.command("describe")
def describe_vault(
    name: str, as_json: JsonOption = False, profile: ProfileOption = None, endpoint_url: EndpointOption = None
) -> None:
    """Show one backup vault."""
    answer = call_api(profile, endpoint_url, "describe_backup_vault", BackupVaultName=name)
    report(answer, as_json, title=f"vault {name}")


@vaults_app.command("delete")
def delete_vault(
    name: str, as_json: JsonOption = False, profile: ProfileOption = None, endpoint_url: EndpointOption = None
) -> None:
    """Delete an empty backup vault."""
    client = connect(profile, endpoint_url)
    with api_errors():
        client.call("delete_backup_vault", BackupVaultName=name)
    report({"BackupVaultName": name, "Deleted": True}, as_json, message=f"deleted vault {name}")


# --- plans ------------------------------------------------------------------------------------------


@plans_app.command("list")
def list_plans(
    as_json: JsonOption = False, profile: ProfileOption = None, endpoint_url: EndpointOption = None
) -> None:
    """List backup plans (their current versions)."""
    client = connect(profile, endpoint_url)
    with api_errors():
        plans = client.collect("list_backup_plans", "BackupPlansList")
    if as_json:
        emit_json({"BackupPlansList": plans})
        return
    print_table(
        ("BackupPlanId", "Name", "VersionId", "Created", "LastExecution"),
        [
            (
                plan["BackupPlanId"],
                plan.get("BackupPlanName"),
                plan.get("VersionId"),
                plan.get("CreationDate"),
                plan.get("LastExecutionDate"),
            )
            for plan in plans
        ],
        no_wrap=("BackupPlanId", "VersionId"),
        empty="no backup plans; create one with 'backvault plans create -f plan.json'",
    )


@plans_app.command("get")
def get_plan(
    plan_id: Annotated[str, typer.Argument(help="The BackupPlanId.")],
    version_id: Annotated[
        str | None, typer.Option("--version-id", help="An earlier version.", show_default=False)
    ] = None,
    as_json: JsonOption = False,
    profile: ProfileOption = None,
    endpoint_url: EndpointOption = None,
) -> None:
    """Show a backup plan and its rules."""
    parameters: dict[str, Any] = {"BackupPlanId": plan_id}
    if version_id:
        parameters["VersionId"] = version_id
    client = connect(profile, endpoint_url)
    with api_errors():
        answer = client.call("get_backup_plan", **parameters)
    if as_json:
        emit_json(answer)
        return
    plan = answer.get("BackupPlan", {})
    summary = {key: value for key, value in answer.items() if key != "BackupPlan"}
    print_fields({"BackupPlanName": plan.get("BackupPlanName"), **summary}, title=f"plan {plan_id}")
    print_table(
        ("Rule", "Vault", "Schedule", "Timezone", "StartWindow", "CompletionWindow", "Lifecycle", "Copies"),
        [
            (
                rule.get("RuleName"),
                rule.get("TargetBackupVaultName"),
                rule.get("ScheduleExpression"),
                rule.get("ScheduleExpressionTimezone"),
                rule.get("StartWindowMinutes"),
                rule.get("CompletionWindowMinutes"),
                rule.get("Lifecycle"),
                [action.get("DestinationBackupVaultArn") for action in rule.get("CopyActions") or []],
            )
            for rule in plan.get("Rules") or []
        ],
        title="rules",
        no_wrap=("Rule",),
    )


@plans_app.command("create")
def create_plan(
    file: FileOption,
    as_json: JsonOption = False,
    profile: ProfileOption = None,
    endpoint_url: EndpointOption = None,
) -> None:
    """Create a plan from a JSON file: a BackupPlan document or {"BackupPlan": ..., "BackupPlanTags": ...}."""
    document = read_json_document(file, "plan")
    plan = unwrap(document, "BackupPlan", "plan", file)
    parameters: dict[str, Any] = {"BackupPlan": plan}
    if isinstance(document, dict) and "BackupPlan" in document:
        for member in ("BackupPlanTags", "CreatorRequestId"):
            if document.get(member) is not None:
                parameters[member] = document[member]
    client = connect(profile, endpoint_url)
    with api_errors():
        answer = client.call("create_backup_plan", **parameters)
    if as_json:
        emit_json(answer)
    else:
        say(
            f"created plan {plan.get('BackupPlanName')}: BackupPlanId {answer['BackupPlanId']}, "
            f"VersionId {answer.get('VersionId')}"
        )


@plans_app.command("update")
def update_plan(
    plan_id: Annotated[str, typer.Argument(help="The BackupPlanId.")],
    file: FileOption,
    as_json: JsonOption = False,
    profile: ProfileOption = None,
    endpoint_url: EndpointOption = None,
) -> None:
    """Replace a plan's document (a new VersionId) from a JSON file."""
    plan = unwrap(read_json_document(file, "plan"), "BackupPlan", "plan", file)
    answer = call_api(profile, endpoint_url, "update_backup_plan", BackupPlanId=plan_id, BackupPlan=plan)
    report(answer, as_json, message=f"updated plan {plan_id}: VersionId {answer.get('VersionId')}")


@plans_app.command("delete")
def delete_plan(
    plan_id: Annotated[str, typer.Argument(help="The BackupPlanId.")],
    as_json: JsonOption = False,
    profile: ProfileOption = None,
    endpoint_url: EndpointOption = None,
) -> None:
    """Delete a backup plan (its selections must be deleted first)."""
    answer = call_api(profile, endpoint_url, "delete_backup_plan", BackupPlanId=plan_id)
    report(answer, as_json, message=f"deleted plan {plan_id}")


# --- selections -------------------------------------------------------------------------------------


@selections_app.command("list")
def list_selections(
    plan_id: Annotated[str, typer.Argument(help="The BackupPlanId.")],
    as_json: JsonOption = False,
    profile: ProfileOption = None,
    endpoint_url: EndpointOption = None,
) -> None:
    """List the selections of a plan."""
    client = connect(profile, endpoint_url)
    with api_errors():
        selections = client.collect("list_backup_selections", "BackupSelectionsList", BackupPlanId=plan_id)
    if as_json:
        emit_json({"BackupSelectionsList": selections})
        return
    print_table(
        ("SelectionId", "Name", "Created", "IamRoleArn"),
        [
            (
                selection["SelectionId"],
                selection.get("SelectionName"),
                selection.get("CreationDate"),
                selection.get("IamRoleArn"),
            )
            for selection in selections
        ],
        no_wrap=("SelectionId",),
        empty=f"plan {plan_id} has no selections",
    )


@selections_app.command("get")
def get_selection(
    plan_id: Annotated[str, typer.Argument(help="The BackupPlanId.")],
    selection_id: Annotated[str, typer.Argument(help="The SelectionId.")],
    as_json: JsonOption = False,
    profile: ProfileOption = None,
    endpoint_url: EndpointOption = None,
) -> None:
    """Show one selection of a plan."""
    client = connect(profile, endpoint_url)
    with api_errors():
        answer = client.call("get_backup_selection", BackupPlanId=plan_id, SelectionId=selection_id)
    if as_json:
        emit_json(answer)
        return
    selection = answer.get("BackupSelection", {})
    summary = {key: value for key, value in answer.items() if key != "BackupSelection"}
    print_fields({**summary, **selection}, title=f"selection {selection_id}")


@selections_app.command("create")
def create_selection(
    plan_id: Annotated[str, typer.Argument(help="The BackupPlanId.")],
    file: FileOption,
    as_json: JsonOption = False,
    profile: ProfileOption = None,
    endpoint_url: EndpointOption = None,
) -> None:
    """Add a selection from a JSON file (the BackupSelection document, or {"BackupSelection": ...}).

    Without an IamRoleArn the selection gets AWS Backup's default service role of the plan's account.
    """
    document = read_json_document(file, "selection")
    selection = unwrap(document, "BackupSelection", "selection", file)
    client = connect(profile, endpoint_url)
    with api_errors():
        if not selection.get("IamRoleArn"):
            plan = client.call("get_backup_plan", BackupPlanId=plan_id)
            selection = {**selection, "IamRoleArn": default_role_arn(str(plan.get("BackupPlanArn", "")))}
        parameters: dict[str, Any] = {"BackupPlanId": plan_id, "BackupSelection": selection}
        if isinstance(document, dict) and document.get("CreatorRequestId"):
            parameters["CreatorRequestId"] = document["CreatorRequestId"]
        answer = client.call("create_backup_selection", **parameters)
    report(
        answer,
        as_json,
        message=f"created selection {selection.get('SelectionName')}: SelectionId {answer['SelectionId']}",
    )


@selections_app.command("delete")
def delete_selection(
    plan_id: Annotated[str, typer.Argument(help="The BackupPlanId.")],
    selection_id: Annotated[str, typer.Argument(help="The SelectionId.")],
    as_json: JsonOption = False,
    profile: ProfileOption = None,
    endpoint_url: EndpointOption = None,
) -> None:
    """Delete a selection from a plan."""
    client = connect(profile, endpoint_url)
    with api_errors():
        client.call("delete_backup_selection", BackupPlanId=plan_id, SelectionId=selection_id)
    report(
        {"BackupPlanId": plan_id, "SelectionId": selection_id, "Deleted": True},
        as_json,
        message=f"deleted selection {selection_id} of plan {plan_id}",
    )
