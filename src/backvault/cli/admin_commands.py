"""``backvault admin|users|keys``: manage API identities directly in a data directory's catalog.

These commands run on the server's machine (they open the catalog and the master secret of
``--data-dir``; ``BACKVAULT_DATABASE_URL`` and ``BACKVAULT_MASTER_SECRET`` are honoured), so the very
first key can be made before any API call is possible. A key's secret is printed by the command that
creates it and never again; nothing here logs it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.table import Table

from backvault.cli.common import DEFAULT_DATA_DIR, DatabaseUrl, DataDir, fail, out_console, print_json
from backvault.control import identity
from backvault.control.catalog import CatalogUnavailableError, open_catalog
from backvault.control.context import ServiceContext
from backvault.control.secrets import SecretError, load_master_secret
from backvault.domain.errors import BackupServiceError

T = TypeVar("T")

admin_app = typer.Typer(help="Server administration: the first admin key.", no_args_is_help=True)
users_app = typer.Typer(help="API users and their IAM-style policies.", no_args_is_help=True)
keys_app = typer.Typer(help="API access keys (AWS Signature V4 credentials).", no_args_is_help=True)

JsonOutput = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


@contextmanager
def _service(data_dir: Path, database_url: str | None) -> Iterator[ServiceContext]:
    """Open the data directory's catalog and master secret; turn expected failures into clear errors."""
    data_dir = data_dir.expanduser()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        master_secret = load_master_secret(data_dir)
        catalog = open_catalog(database_url, data_dir)
    except (SecretError, CatalogUnavailableError, ValueError, OSError) as error:
        fail(str(error))
    try:
        yield ServiceContext(catalog=catalog, master_secret=master_secret)
    finally:
        catalog.dispose()


def _run(data_dir: Path, database_url: str | None, action: Callable[[ServiceContext], T]) -> T:
    with _service(data_dir, database_url) as context:
        try:
            return action(context)
        except BackupServiceError as error:
            fail(error.message)


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value is not None else "-"


# --- admin -----------------------------------------------------------------------------------------


@admin_app.command("bootstrap")
def bootstrap(
    as_json: JsonOutput = False,
    data_dir: DataDir = DEFAULT_DATA_DIR,
    database_url: DatabaseUrl = None,
) -> None:
    """Create the user "admin" with full access and its first access key (once; later runs do nothing)."""
    created, key = _run(data_dir, database_url, identity.bootstrap_admin)
    if not created or key is None:
        message = (
            "An admin user already exists in this catalog; nothing was created. Manage its keys with "
            "'backvault keys create admin' and 'backvault keys delete KEY_ID'."
        )
        if as_json:
            print_json({"Created": False, "UserName": identity.ADMIN_USER_NAME, "Message": message})
        else:
            out_console.print(message, highlight=False)
        return
    if as_json:
        print_json({"AccessKeyId": key["AccessKeyId"], "SecretAccessKey": key["SecretAccessKey"]})
        return
    _print_new_key(key)


def _print_new_key(key: dict[str, Any]) -> None:
    # Plain writes: no markup processing, no wrapping that could break the secret in two.
    sys.stdout.write(
        f"UserName:        {key['UserName']}\n"
        f"AccessKeyId:     {key['AccessKeyId']}\n"
        f"SecretAccessKey: {key['SecretAccessKey']}\n"
        "Store the secret now: it is not shown again.\n"
    )


# --- users -----------------------------------------------------------------------------------------


@users_app.command("create")
def create_user(
    user_name: Annotated[str, typer.Argument(help="1-64 letters, digits and + = , . @ _ -")],
    policy_file: Annotated[
        Path | None,
        typer.Option("--policy-file", help="Attach this policy document (JSON) as inline policy 'default'."),
    ] = None,
    as_json: JsonOutput = False,
    data_dir: DataDir = DEFAULT_DATA_DIR,
    database_url: DatabaseUrl = None,
) -> None:
    """Create a user (without keys; see 'backvault keys create')."""
    document = _read_document(policy_file) if policy_file is not None else None

    def action(context: ServiceContext) -> dict[str, Any]:
        if document is not None:
            identity.parse_policy_document(document)  # refuse a bad policy before creating anything
        answer = identity.create_user(context, user_name)
        if document is not None:
            identity.put_user_policy(context, user_name, "default", document)
        return answer

    answer = _run(data_dir, database_url, action)
    if as_json:
        print_json(answer)
    else:
        out_console.print(
            f"created user {answer['User']['UserName']} ({answer['User']['Arn']})", highlight=False
        )


@users_app.command("list")
def list_users(
    as_json: JsonOutput = False,
    data_dir: DataDir = DEFAULT_DATA_DIR,
    database_url: DatabaseUrl = None,
) -> None:
    """List users with their policies and keys."""

    def action(context: ServiceContext) -> list[dict[str, Any]]:
        users: list[dict[str, Any]] = identity.list_users(context)["Users"]
        for user in users:
            user["PolicyNames"] = identity.list_user_policies(context, user["UserName"])["PolicyNames"]
            keys = identity.list_access_keys(context, user["UserName"])["AccessKeyMetadata"]
            user["AccessKeyIds"] = [key["AccessKeyId"] for key in keys]
        return users

    users = _run(data_dir, database_url, action)
    if as_json:
        print_json({"Users": users})
        return
    table = Table("UserName", "Arn", "Created", "Policies", "AccessKeys")
    # Names and key ids are copied from here: never break them across lines.
    for column in (table.columns[0], table.columns[4]):
        column.no_wrap = True
    for user in users:
        table.add_row(
            user["UserName"],
            user["Arn"],
            _when(user["CreateDate"]),
            ", ".join(user["PolicyNames"]) or "-",
            ", ".join(user["AccessKeyIds"]) or "-",
        )
    out_console.print(table)


@users_app.command("delete")
def delete_user(
    user_name: str,
    force: Annotated[bool, typer.Option("--force", help="Also delete the user's keys and policies.")] = False,
    data_dir: DataDir = DEFAULT_DATA_DIR,
    database_url: DatabaseUrl = None,
) -> None:
    """Delete a user (with --force even while it has keys or policies)."""
    _run(data_dir, database_url, lambda context: identity.delete_user(context, user_name, force=force))
    out_console.print(f"deleted user {user_name}", highlight=False)


@users_app.command("put-policy")
def put_policy(
    user_name: str,
    policy_name: str,
    document_file: Annotated[
        Path, typer.Option("--document", help="The policy document (JSON file, or - for standard input).")
    ],
    data_dir: DataDir = DEFAULT_DATA_DIR,
    database_url: DatabaseUrl = None,
) -> None:
    """Add or replace an inline IAM-style policy of a user."""
    document = _read_document(document_file)
    _run(
        data_dir,
        database_url,
        lambda context: identity.put_user_policy(context, user_name, policy_name, document),
    )
    out_console.print(f"stored policy {policy_name} of user {user_name}", highlight=False)


@users_app.command("get-policy")
def get_policy(
    user_name: str,
    policy_name: str,
    data_dir: DataDir = DEFAULT_DATA_DIR,
    database_url: DatabaseUrl = None,
) -> None:
    """Print one inline policy of a user (JSON)."""
    answer = _run(
        data_dir, database_url, lambda context: identity.get_user_policy(context, user_name, policy_name)
    )
    print_json(answer["PolicyDocument"])


@users_app.command("delete-policy")
def delete_policy(
    user_name: str,
    policy_name: str,
    data_dir: DataDir = DEFAULT_DATA_DIR,
    database_url: DatabaseUrl = None,
) -> None:
    """Delete one inline policy of a user."""
    _run(data_dir, database_url, lambda context: identity.delete_user_policy(context, user_name, policy_name))
    out_console.print(f"deleted policy {policy_name} of user {user_name}", highlight=False)


def _read_document(path: Path) -> str:
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    except OSError as error:
        fail(f"cannot read the policy document {path}: {error.strerror}")
    try:
        json.loads(text)
    except ValueError as error:
        fail(f"the policy document {path} is not valid JSON: {error}")
    return text


# --- keys ------------------------------------------------------------------------------------------


@keys_app.command("create")
def create_key(
    user_name: str,
    as_json: JsonOutput = False,
    data_dir: DataDir = DEFAULT_DATA_DIR,
    database_url: DatabaseUrl = None,
) -> None:
    """Create an access key for a user; its secret is printed now and never again."""
    key = _run(data_dir, database_url, lambda context: identity.create_access_key(context, user_name))[
        "AccessKey"
    ]
    if as_json:
        print_json({"AccessKeyId": key["AccessKeyId"], "SecretAccessKey": key["SecretAccessKey"]})
    else:
        _print_new_key(key)


@keys_app.command("list")
def list_keys(
    user_name: Annotated[str | None, typer.Option("--user", help="Only this user's keys.")] = None,
    as_json: JsonOutput = False,
    data_dir: DataDir = DEFAULT_DATA_DIR,
    database_url: DatabaseUrl = None,
) -> None:
    """List access keys (never their secrets)."""
    keys = _run(data_dir, database_url, lambda context: identity.list_access_keys(context, user_name))[
        "AccessKeyMetadata"
    ]
    if as_json:
        print_json({"AccessKeyMetadata": keys})
        return
    table = Table("AccessKeyId", "UserName", "Status", "Created", "LastUsed")
    for column in table.columns[:3]:
        column.no_wrap = True
    for key in keys:
        table.add_row(
            key["AccessKeyId"],
            key["UserName"],
            key["Status"],
            _when(key["CreateDate"]),
            _when(key.get("LastUsedDate")),
        )
    out_console.print(table)


@keys_app.command("delete")
def delete_key(
    access_key_id: str,
    user_name: Annotated[
        str | None, typer.Option("--user", help="Refuse unless the key is this user's.")
    ] = None,
    data_dir: DataDir = DEFAULT_DATA_DIR,
    database_url: DatabaseUrl = None,
) -> None:
    """Delete an access key: requests signed with it are refused from now on."""
    _run(
        data_dir,
        database_url,
        lambda context: identity.delete_access_key(context, access_key_id, user_name=user_name),
    )
    out_console.print(f"deleted access key {access_key_id}", highlight=False)


@keys_app.command("deactivate")
def deactivate_key(
    access_key_id: str,
    data_dir: DataDir = DEFAULT_DATA_DIR,
    database_url: DatabaseUrl = None,
) -> None:
    """Make a key Inactive (refused until activated again)."""
    _run(
        data_dir, database_url, lambda context: identity.update_access_key(context, access_key_id, "Inactive")
    )
    out_console.print(f"access key {access_key_id} is Inactive", highlight=False)


@keys_app.command("activate")
def activate_key(
    access_key_id: str,
    data_dir: DataDir = DEFAULT_DATA_DIR,
    database_url: DatabaseUrl = None,
) -> None:
    """Make an Inactive key Active again."""
    _run(data_dir, database_url, lambda context: identity.update_access_key(context, access_key_id, "Active"))
    out_console.print(f"access key {access_key_id} is Active", highlight=False)
