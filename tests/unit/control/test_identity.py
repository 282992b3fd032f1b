"""Users, inline policies and access keys in the catalog (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from control_helpers import FakeClock
from sqlalchemy import select, text

from backvault.control import identity
from backvault.control.catalog.activity import Event
from backvault.control.catalog.identity_models import IamAccessKey
from backvault.control.context import ServiceContext
from backvault.control.secrets import SecretError
from backvault.domain.errors import (
    AlreadyExistsException,
    InvalidParameterValueException,
    InvalidRequestException,
    LimitExceededException,
    ResourceNotFoundException,
    UnrecognizedClientException,
)
from backvault.domain.iam import validate_policy_document

READER = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "backup:List*", "Resource": "*"}],
}


def test_users_are_created_listed_and_refused_twice(context: ServiceContext) -> None:
    created = identity.create_user(context, "alice")["User"]
    assert created["Arn"] == "arn:aws:iam::000000000000:user/alice"
    assert created["UserId"].startswith("BVU") and len(created["UserId"]) == 20
    assert created["CreateDate"] == context.now()
    identity.create_user(context, "bob@example.com")
    assert [user["UserName"] for user in identity.list_users(context)["Users"]] == [
        "alice",
        "bob@example.com",
    ]
    assert identity.get_user(context, "alice")["User"] == created
    with pytest.raises(AlreadyExistsException, match="'alice' already exists"):
        identity.create_user(context, "alice")
    with pytest.raises(InvalidParameterValueException, match="UserName 'a b' is not valid"):
        identity.create_user(context, "a b")
    with pytest.raises(InvalidParameterValueException, match="not valid"):
        identity.create_user(context, "x" * 65)
    with pytest.raises(ResourceNotFoundException, match="'carol' does not exist"):
        identity.get_user(context, "carol")


def test_inline_policies_are_validated_and_replaced(context: ServiceContext) -> None:
    identity.create_user(context, "alice")
    identity.put_user_policy(context, "alice", "read", json.dumps(READER))
    identity.put_user_policy(
        context, "alice", "admin", {"Statement": {"Effect": "Allow", "Action": "*", "Resource": "*"}}
    )
    assert identity.list_user_policies(context, "alice")["PolicyNames"] == ["admin", "read"]
    stored = identity.get_user_policy(context, "alice", "read")
    assert stored["PolicyDocument"]["Statement"][0]["Action"] == ["backup:List*"]
    with pytest.raises(
        InvalidParameterValueException, match=r"MalformedPolicyDocument: Statement\[0\]: Effect"
    ):
        identity.put_user_policy(
            context, "alice", "read", {"Statement": [{"Effect": "Maybe", "Action": "*", "Resource": "*"}]}
        )
    with pytest.raises(InvalidParameterValueException, match="not valid JSON"):
        identity.put_user_policy(context, "alice", "read", "{nope")
    with pytest.raises(InvalidParameterValueException, match="PolicyName"):
        identity.put_user_policy(context, "alice", "bad name", READER)
    with pytest.raises(ResourceNotFoundException):
        identity.put_user_policy(context, "nobody", "read", READER)
    # the refused replacement left the stored document alone
    assert identity.get_user_policy(context, "alice", "read") == stored
    identity.delete_user_policy(context, "alice", "admin")
    assert identity.list_user_policies(context, "alice")["PolicyNames"] == ["read"]
    with pytest.raises(ResourceNotFoundException, match="no policy named 'admin'"):
        identity.get_user_policy(context, "alice", "admin")


def test_access_key_secret_is_shown_once_and_stored_wrapped(context: ServiceContext, data_dir: Path) -> None:
    identity.create_user(context, "alice")
    identity.put_user_policy(context, "alice", "read", READER)
    key = identity.create_access_key(context, "alice")["AccessKey"]
    key_id, secret = key["AccessKeyId"], key["SecretAccessKey"]
    assert key_id.startswith("BVK") and len(key_id) == 20 and len(secret) == 40
    assert key["Status"] == "Active" and key["UserName"] == "alice"
    listed = identity.list_access_keys(context, "alice")["AccessKeyMetadata"]
    assert [item["AccessKeyId"] for item in listed] == [key_id]
    assert secret not in repr(listed) and "SecretAccessKey" not in listed[0]
    assert identity.list_access_keys(context)["AccessKeyMetadata"] == listed

    principal, found = identity.signing_secret(context, key_id)
    assert found == secret
    assert principal == identity.Principal(
        "alice",
        "arn:aws:iam::000000000000:user/alice",
        key_id,
        (identity.get_user_policy(context, "alice", "read")["PolicyDocument"],),
    )
    assert "Statement" not in repr(principal)

    with context.catalog.transaction() as session:
        row = session.get(IamAccessKey, key_id)
        assert row is not None
        wrapped = row.wrapped_secret
    assert secret not in wrapped
    # The token is bound to its key: moved to another key it does not unwrap.
    with pytest.raises(SecretError):
        context.master_secret.unwrap(wrapped, identity.secret_context("BVKOTHER000000000000"))
    # Nowhere in the catalog in clear (the whole database as text).
    assert secret not in _catalog_text(context, data_dir)


def _catalog_text(context: ServiceContext, data_dir: Path) -> str:
    if context.catalog.dialect == "sqlite":
        context.catalog.dispose()  # checkpoint nothing away: read the main file and the WAL both
        return b"".join(path.read_bytes() for path in data_dir.glob("catalog.db*")).decode("latin-1")
    with context.catalog.engine.connect() as connection:
        tables = ["iam_access_keys", "iam_users", "iam_user_policies", "events"]
        return "".join(str(list(connection.execute(text(f"SELECT * FROM {table}")))) for table in tables)


def test_key_limit_status_and_deletion(context: ServiceContext) -> None:
    identity.create_user(context, "alice")
    first = identity.create_access_key(context, "alice")["AccessKey"]["AccessKeyId"]
    second = identity.create_access_key(context, "alice")["AccessKey"]["AccessKeyId"]
    with pytest.raises(LimitExceededException, match="already has 2 access keys"):
        identity.create_access_key(context, "alice")
    identity.update_access_key(context, first, "Inactive", user_name="alice")
    assert identity.list_access_keys(context, "alice")["AccessKeyMetadata"][0]["Status"] == "Inactive"
    with pytest.raises(
        UnrecognizedClientException, match="security token included in the request is invalid"
    ):
        identity.signing_secret(context, first)
    identity.update_access_key(context, first, "Active")
    assert identity.signing_secret(context, first)[0].access_key_id == first
    with pytest.raises(InvalidParameterValueException, match="Active or Inactive"):
        identity.update_access_key(context, first, "Disabled")
    identity.create_user(context, "bob")
    with pytest.raises(ResourceNotFoundException, match="of user 'bob' does not exist"):
        identity.delete_access_key(context, first, user_name="bob")
    identity.delete_access_key(context, first, user_name="alice")
    with pytest.raises(UnrecognizedClientException):
        identity.signing_secret(context, first)
    with pytest.raises(ResourceNotFoundException):
        identity.delete_access_key(context, first)
    assert [k["AccessKeyId"] for k in identity.list_access_keys(context, "alice")["AccessKeyMetadata"]] == [
        second
    ]
    for malformed in ["", "short", "bvk-lower-case-000000", "A" * 33]:
        with pytest.raises(UnrecognizedClientException):
            identity.signing_secret(context, malformed)


def test_deleting_a_user_with_keys_needs_force(context: ServiceContext) -> None:
    identity.create_user(context, "alice")
    identity.put_user_policy(context, "alice", "read", READER)
    key_id = identity.create_access_key(context, "alice")["AccessKey"]["AccessKeyId"]
    with pytest.raises(InvalidRequestException, match="still has 1 access key"):
        identity.delete_user(context, "alice")
    identity.delete_user(context, "alice", force=True)
    assert identity.list_users(context)["Users"] == []
    with pytest.raises(UnrecognizedClientException):
        identity.signing_secret(context, key_id)
    identity.create_user(context, "alice")  # the name is free again, without the old policies
    assert identity.list_user_policies(context, "alice")["PolicyNames"] == []
    identity.delete_user(context, "alice")
    with pytest.raises(ResourceNotFoundException):
        identity.delete_user(context, "alice")


def test_bootstrap_admin_creates_once(context: ServiceContext) -> None:
    created, key = identity.bootstrap_admin(context)
    assert created and key is not None
    principal, secret = identity.signing_secret(context, key["AccessKeyId"])
    assert secret == key["SecretAccessKey"]
    assert principal.user_name == "admin"
    assert principal.policies == (validate_policy_document(identity.ADMIN_POLICY),)
    assert identity.bootstrap_admin(context) == (False, None)
    assert len(identity.list_access_keys(context, "admin")["AccessKeyMetadata"]) == 1


def test_last_use_is_recorded_coarsely(context: ServiceContext, clock: FakeClock) -> None:
    identity.create_user(context, "alice")
    key_id = identity.create_access_key(context, "alice")["AccessKey"]["AccessKeyId"]
    identity.record_access_key_use(context, key_id, "local")
    first = context.now()
    clock.advance(timedelta(minutes=1))
    identity.record_access_key_use(context, key_id, "local")
    assert identity.list_access_keys(context, "alice")["AccessKeyMetadata"][0]["LastUsedDate"] == first
    clock.advance(identity.LAST_USED_RESOLUTION)
    identity.record_access_key_use(context, key_id, "local")
    assert (
        identity.list_access_keys(context, "alice")["AccessKeyMetadata"][0]["LastUsedDate"] == context.now()
    )


def test_identity_changes_are_events_without_secrets(context: ServiceContext) -> None:
    identity.create_user(context, "alice")
    key = identity.create_access_key(context, "alice")["AccessKey"]
    identity.delete_access_key(context, key["AccessKeyId"])
    with context.catalog.transaction() as session:
        events = session.scalars(select(Event).where(Event.event_type.like("IAM_%")).order_by(Event.id)).all()
        kinds = [event.event_type for event in events]
        details = json.dumps([event.detail for event in events])
    assert kinds == [identity.USER_CREATED, identity.ACCESS_KEY_CREATED, identity.ACCESS_KEY_DELETED]
    assert key["AccessKeyId"] in details and key["SecretAccessKey"] not in details


def test_migration_0005_creates_exactly_the_identity_models(context: ServiceContext) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from backvault.control.catalog.base import Base

    with context.catalog.engine.connect() as connection:
        migration = MigrationContext.configure(connection, opts={"compare_type": True})
        diff = compare_metadata(migration, Base.metadata)
    assert [change for change in diff if "iam_" in str(change)] == []
    assert {"iam_users", "iam_user_policies", "iam_access_keys"} <= set(Base.metadata.tables)
