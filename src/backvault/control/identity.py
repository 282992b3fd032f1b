"""API identities: users, inline policies and access keys (shapes of AWS IAM's answers).

An access key's secret is returned once, by ``create_access_key`` (and ``bootstrap_admin``), and
stored only wrapped by the master secret under a purpose naming the key: the server needs it back to
verify SigV4 signatures, which a hash would not allow. Listing keys never shows it.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backvault.control.catalog.identity_models import IamAccessKey, IamUser, IamUserPolicy
from backvault.control.context import ServiceContext
from backvault.control.events import record_event
from backvault.control.secrets import SecretError
from backvault.domain.errors import (
    AlreadyExistsException,
    DependencyFailureException,
    InvalidParameterValueException,
    InvalidRequestException,
    LimitExceededException,
    ResourceNotFoundException,
    UnrecognizedClientException,
    expect_str,
)
from backvault.domain.iam import MAX_POLICY_CHARACTERS, validate_policy_document

ADMIN_USER_NAME = "admin"
ADMIN_POLICY_NAME = "AdministratorAccess"
ADMIN_POLICY: dict[str, Any] = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
}
ACCESS_KEY_PREFIX = "BVK"
ACCESS_KEY_LENGTH = 20
MAX_ACCESS_KEYS_PER_USER = 2  # as IAM: enough to rotate, few enough to keep track of
KEY_STATUSES = ("Active", "Inactive")
# How stale "last used" may get: recording every request would be a catalog write per request.
LAST_USED_RESOLUTION = timedelta(minutes=5)
_KEY_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_USER_NAME_RE = re.compile(r"^[\w+=,.@-]{1,64}$", re.ASCII)
_POLICY_NAME_RE = re.compile(r"^[\w+=,.@-]{1,128}$", re.ASCII)
_ACCESS_KEY_RE = re.compile(r"^[A-Z0-9]{16,32}$")
# Event types of identity changes (plain strings: the audit trail, never a secret in the detail).
USER_CREATED = "IAM_USER_CREATED"
USER_DELETED = "IAM_USER_DELETED"
USER_POLICY_CHANGED = "IAM_USER_POLICY_CHANGED"
ACCESS_KEY_CREATED = "IAM_ACCESS_KEY_CREATED"
ACCESS_KEY_CHANGED = "IAM_ACCESS_KEY_STATUS_CHANGED"
ACCESS_KEY_DELETED = "IAM_ACCESS_KEY_DELETED"


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: its user, the key it signed with, and its policy documents."""

    user_name: str
    user_arn: str
    access_key_id: str
    policies: tuple[dict[str, Any], ...] = field(default=(), repr=False)


def secret_context(access_key_id: str) -> str:
    """The wrapping context of a key's secret: the purpose and the key, so rows cannot swap."""
    return f"iam-access-key/{access_key_id}/secret-access-key"


def user_arn(context: ServiceContext, user_name: str) -> str:
    """Return the IAM-style ARN of a user."""
    return f"arn:{context.partition}:iam::{context.account}:user/{user_name}"


def validate_user_name(user_name: Any) -> str:
    """Return a valid user name or raise InvalidParameterValueException saying what is allowed."""
    name = expect_str(user_name, "UserName")
    if not _USER_NAME_RE.match(name):
        raise InvalidParameterValueException(
            f"UserName {name!r} is not valid: use 1-64 letters, digits and + = , . @ _ -."
        )
    return name


def validate_policy_name(policy_name: Any) -> str:
    """Return a valid inline policy name or raise InvalidParameterValueException."""
    name = expect_str(policy_name, "PolicyName")
    if not _POLICY_NAME_RE.match(name):
        raise InvalidParameterValueException(
            f"PolicyName {name!r} is not valid: use 1-128 letters, digits and + = , . @ _ -."
        )
    return name


def parse_policy_document(policy_document: Any) -> dict[str, Any]:
    """Accept a policy as a JSON string or an object; return the validated document."""
    if isinstance(policy_document, str):
        if len(policy_document) > MAX_POLICY_CHARACTERS:
            raise InvalidParameterValueException(
                f"PolicyDocument is {len(policy_document)} characters; the limit is {MAX_POLICY_CHARACTERS}."
            )
        try:
            policy_document = json.loads(policy_document)
        except ValueError as error:
            raise InvalidParameterValueException(f"PolicyDocument is not valid JSON: {error}.") from None
    return validate_policy_document(policy_document)


# --- users -----------------------------------------------------------------------------------------


def create_user(context: ServiceContext, user_name: str) -> dict[str, Any]:
    """Create a user without policies or keys; AlreadyExistsException if the name is taken."""
    name = validate_user_name(user_name)
    with context.catalog.transaction() as session:
        user = _add_user(context, session, name)
        return {"User": _user_to_aws(user)}


def list_users(context: ServiceContext) -> dict[str, Any]:
    """Return every user, by name."""
    with context.catalog.transaction() as session:
        users = session.scalars(select(IamUser).order_by(IamUser.name)).all()
        return {"Users": [_user_to_aws(user) for user in users], "IsTruncated": False}


def get_user(context: ServiceContext, user_name: str) -> dict[str, Any]:
    """Return one user."""
    with context.catalog.transaction() as session:
        return {"User": _user_to_aws(_get_user_row(session, user_name))}


def delete_user(context: ServiceContext, user_name: str, *, force: bool = False) -> dict[str, Any]:
    """Delete a user; while it has keys or policies only with ``force`` (which deletes those too)."""
    with context.catalog.transaction() as session:
        user = _get_user_row(session, user_name, for_update=True)
        keys = session.scalars(select(IamAccessKey.access_key_id).where(IamAccessKey.user_name == user.name))
        key_ids = list(keys)
        policy_names = list(
            session.scalars(select(IamUserPolicy.policy_name).where(IamUserPolicy.user_name == user.name))
        )
        if (key_ids or policy_names) and not force:
            raise InvalidRequestException(
                f"User {user.name!r} still has {len(key_ids)} access key(s) and {len(policy_names)} "
                "policy(ies); delete them first, or force the deletion (CLI --force, API ?force=true) to "
                "remove them too."
            )
        session.execute(delete(IamAccessKey).where(IamAccessKey.user_name == user.name))
        session.execute(delete(IamUserPolicy).where(IamUserPolicy.user_name == user.name))
        session.delete(user)
        record_event(
            session,
            USER_DELETED,
            context.now(),
            resource_arn=user.arn,
            detail={"UserName": user.name, "DeletedAccessKeyIds": key_ids, "DeletedPolicies": policy_names},
        )
        return {}


# --- inline policies -------------------------------------------------------------------------------


def put_user_policy(
    context: ServiceContext, user_name: str, policy_name: str, policy_document: Any
) -> dict[str, Any]:
    """Add or replace an inline policy of a user (the document is validated first)."""
    name = validate_policy_name(policy_name)
    document = parse_policy_document(policy_document)
    with context.catalog.transaction() as session:
        user = _get_user_row(session, user_name, for_update=True)
        _store_policy(context, session, user, name, document)
        return {}


def get_user_policy(context: ServiceContext, user_name: str, policy_name: str) -> dict[str, Any]:
    """Return one inline policy of a user."""
    with context.catalog.transaction() as session:
        user = _get_user_row(session, user_name)
        row = session.get(IamUserPolicy, (user.name, expect_str(policy_name, "PolicyName")))
        if row is None:
            raise ResourceNotFoundException(f"User {user.name!r} has no policy named {policy_name!r}.")
        return {"UserName": user.name, "PolicyName": row.policy_name, "PolicyDocument": row.document}


def list_user_policies(context: ServiceContext, user_name: str) -> dict[str, Any]:
    """Return the names of a user's inline policies."""
    with context.catalog.transaction() as session:
        user = _get_user_row(session, user_name)
        names = session.scalars(
            select(IamUserPolicy.policy_name)
            .where(IamUserPolicy.user_name == user.name)
            .order_by(IamUserPolicy.policy_name)
        )
        return {"PolicyNames": list(names), "IsTruncated": False}


def delete_user_policy(context: ServiceContext, user_name: str, policy_name: str) -> dict[str, Any]:
    """Delete one inline policy of a user."""
    with context.catalog.transaction() as session:
        user = _get_user_row(session, user_name, for_update=True)
        row = session.get(IamUserPolicy, (user.name, expect_str(policy_name, "PolicyName")))
        if row is None:
            raise ResourceNotFoundException(f"User {user.name!r} has no policy named {policy_name!r}.")
        session.delete(row)
        record_event(
            session,
            USER_POLICY_CHANGED,
            context.now(),
            resource_arn=user.arn,
            detail={"UserName": user.name, "PolicyName": row.policy_name, "Deleted": True},
        )
        return {}


# --- access keys -----------------------------------------------------------------------------------


def create_access_key(context: ServiceContext, user_name: str) -> dict[str, Any]:
    """Create an access key; the answer holds its SecretAccessKey, which is never shown again."""
    with context.catalog.transaction() as session:
        user = _get_user_row(session, user_name, for_update=True)
        count = session.scalar(
            select(func.count()).select_from(IamAccessKey).where(IamAccessKey.user_name == user.name)
        )
        if count and count >= MAX_ACCESS_KEYS_PER_USER:
            raise LimitExceededException(
                f"User {user.name!r} already has {count} access keys (the limit is "
                f"{MAX_ACCESS_KEYS_PER_USER}); delete one before creating another."
            )
        return {"AccessKey": _add_access_key(context, session, user)}


def list_access_keys(context: ServiceContext, user_name: str | None = None) -> dict[str, Any]:
    """Return the keys of a user (of every user when no name is given), never their secrets."""
    with context.catalog.transaction() as session:
        statement = select(IamAccessKey).order_by(IamAccessKey.user_name, IamAccessKey.creation_date)
        if user_name is not None:
            statement = statement.where(IamAccessKey.user_name == _get_user_row(session, user_name).name)
        keys = session.scalars(statement).all()
        return {"AccessKeyMetadata": [_key_to_aws(key) for key in keys], "IsTruncated": False}


def update_access_key(
    context: ServiceContext, access_key_id: str, status: str, *, user_name: str | None = None
) -> dict[str, Any]:
    """Set a key's status to Active or Inactive (an Inactive key authenticates nothing)."""
    if status not in KEY_STATUSES:
        raise InvalidParameterValueException(f"Status must be Active or Inactive, got {status!r}.")
    with context.catalog.transaction() as session:
        key = _get_key_row(session, access_key_id, user_name)
        if key.status != status:
            key.status = status
            record_event(
                session,
                ACCESS_KEY_CHANGED,
                context.now(),
                detail={"UserName": key.user_name, "AccessKeyId": key.access_key_id, "Status": status},
            )
        return {}


def delete_access_key(
    context: ServiceContext, access_key_id: str, *, user_name: str | None = None
) -> dict[str, Any]:
    """Delete a key (if ``user_name`` is given, the key must be that user's)."""
    with context.catalog.transaction() as session:
        key = _get_key_row(session, access_key_id, user_name)
        session.delete(key)
        record_event(
            session,
            ACCESS_KEY_DELETED,
            context.now(),
            detail={"UserName": key.user_name, "AccessKeyId": key.access_key_id},
        )
        return {}


def bootstrap_admin(context: ServiceContext) -> tuple[bool, dict[str, Any] | None]:
    """Create user "admin" with full access and one key, once; later calls create nothing.

    Returns (True, the AccessKey answer with its secret) the first time, (False, None) after.
    """
    try:
        with context.catalog.transaction() as session:
            if session.get(IamUser, ADMIN_USER_NAME) is not None:
                return False, None
            user = _add_user(context, session, ADMIN_USER_NAME)
            _store_policy(context, session, user, ADMIN_POLICY_NAME, validate_policy_document(ADMIN_POLICY))
            return True, _add_access_key(context, session, user)
    except AlreadyExistsException:
        return False, None  # a concurrent bootstrap won the race


# --- authentication support ------------------------------------------------------------------------


def signing_secret(context: ServiceContext, access_key_id: str) -> tuple[Principal, str]:
    """Return the caller a key belongs to and the key's secret; UnrecognizedClientException if unusable."""
    unknown = UnrecognizedClientException("The security token included in the request is invalid.")
    if not isinstance(access_key_id, str) or not _ACCESS_KEY_RE.match(access_key_id):
        raise unknown
    with context.catalog.transaction() as session:
        key = session.get(IamAccessKey, access_key_id)
        if key is None or key.status != "Active":
            raise unknown
        user = session.get(IamUser, key.user_name)
        if user is None:
            raise unknown
        documents = session.scalars(
            select(IamUserPolicy.document)
            .where(IamUserPolicy.user_name == user.name)
            .order_by(IamUserPolicy.policy_name)
        )
        principal = Principal(user.name, user.arn, key.access_key_id, tuple(documents))
        wrapped = key.wrapped_secret
    try:
        secret = context.master_secret.unwrap(wrapped, secret_context(access_key_id))
    except SecretError as error:
        raise DependencyFailureException(f"Access key {access_key_id} cannot be used: {error}") from None
    return principal, secret.decode("utf-8")


def record_access_key_use(context: ServiceContext, access_key_id: str, region: str) -> None:
    """Stamp a key's last use (at most once per LAST_USED_RESOLUTION, to spare the catalog writes)."""
    now = context.now()
    with context.catalog.transaction() as session:
        session.execute(
            update(IamAccessKey)
            .where(
                IamAccessKey.access_key_id == access_key_id,
                (IamAccessKey.last_used_date.is_(None))
                | (IamAccessKey.last_used_date < now - LAST_USED_RESOLUTION),
            )
            .values(last_used_date=now, last_used_region=region[:64])
        )


# --- helpers ---------------------------------------------------------------------------------------


def _random_identifier(prefix: str) -> str:
    return prefix + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(ACCESS_KEY_LENGTH - len(prefix)))


def _add_user(context: ServiceContext, session: Session, name: str) -> IamUser:
    if session.get(IamUser, name) is not None:
        raise AlreadyExistsException(f"User {name!r} already exists.")
    user = IamUser(
        name=name,
        user_id=_random_identifier("BVU"),
        arn=user_arn(context, name),
        creation_date=context.now(),
    )
    session.add(user)
    try:
        session.flush()  # a concurrent creation of the same name fails here
    except IntegrityError:
        raise AlreadyExistsException(f"User {name!r} already exists.") from None
    record_event(session, USER_CREATED, user.creation_date, resource_arn=user.arn, detail={"UserName": name})
    return user


def _store_policy(
    context: ServiceContext, session: Session, user: IamUser, name: str, document: dict[str, Any]
) -> None:
    row = session.get(IamUserPolicy, (user.name, name))
    if row is None:
        session.add(
            IamUserPolicy(user_name=user.name, policy_name=name, document=document, update_date=context.now())
        )
    else:
        row.document = document
        row.update_date = context.now()
    record_event(
        session,
        USER_POLICY_CHANGED,
        context.now(),
        resource_arn=user.arn,
        detail={"UserName": user.name, "PolicyName": name},
    )


def _add_access_key(context: ServiceContext, session: Session, user: IamUser) -> dict[str, Any]:
    access_key_id = _random_identifier(ACCESS_KEY_PREFIX)
    secret = secrets.token_urlsafe(30)  # 40 characters, 240 bits
    key = IamAccessKey(
        access_key_id=access_key_id,
        user_name=user.name,
        wrapped_secret=context.master_secret.wrap(secret.encode("utf-8"), secret_context(access_key_id)),
        status="Active",
        creation_date=context.now(),
    )
    session.add(key)
    session.flush()
    record_event(
        session,
        ACCESS_KEY_CREATED,
        key.creation_date,
        resource_arn=user.arn,
        detail={"UserName": user.name, "AccessKeyId": access_key_id},
    )
    answer = _key_to_aws(key)
    answer["SecretAccessKey"] = secret
    return answer


def _get_user_row(session: Session, user_name: str, *, for_update: bool = False) -> IamUser:
    statement = select(IamUser).where(IamUser.name == expect_str(user_name, "UserName"))
    user = session.scalars(statement.with_for_update() if for_update else statement).first()
    if user is None:
        raise ResourceNotFoundException(f"User {user_name!r} does not exist.")
    return user


def _get_key_row(session: Session, access_key_id: str, user_name: str | None) -> IamAccessKey:
    key = session.get(IamAccessKey, expect_str(access_key_id, "AccessKeyId"))
    if key is None or (user_name is not None and key.user_name != user_name):
        owner = f" of user {user_name!r}" if user_name is not None else ""
        raise ResourceNotFoundException(f"Access key {access_key_id!r}{owner} does not exist.")
    return key


def _user_to_aws(user: IamUser) -> dict[str, Any]:
    return {
        "UserName": user.name,
        "UserId": user.user_id,
        "Arn": user.arn,
        "Path": "/",
        "CreateDate": user.creation_date,
    }


def _key_to_aws(key: IamAccessKey) -> dict[str, Any]:
    body: dict[str, Any] = {
        "UserName": key.user_name,
        "AccessKeyId": key.access_key_id,
        "Status": key.status,
        "CreateDate": key.creation_date,
    }
    if key.last_used_date is not None:
        body["LastUsedDate"] = key.last_used_date
    return body
