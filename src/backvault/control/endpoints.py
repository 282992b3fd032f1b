"""Source endpoints: register, describe, list, update and delete the places resources are found.

An endpoint has a type (a ``ResourceType``: Filesystem, PostgreSQL, S3...), connection settings (a
JSON object the type's connector defines, never holding secrets), default tags that every resource
discovered behind it inherits, and optionally credentials. Credentials are given either

* as a reference ``env:NAME``: the server reads the environment variable NAME whenever it needs them.
  Its value is a JSON object of credential fields (``{"password": "..."}``,
  ``{"aws_access_key_id": "...", "aws_secret_access_key": "..."}``), or a plain string, which is
  taken as ``{"password": value}``;
* or in clear, as such an object: the catalog stores it only wrapped by the server's master secret
  (purpose ``source-endpoint/<name>/credentials``), and no answer ever returns it.

Answers say which kind is configured (``CredentialsType`` ENVIRONMENT, STORED or NONE) and show the
reference for ENVIRONMENT only. Registering and updating check the endpoint with its connector
(``check_endpoint``) unless told not to, so a typo in a root path or a wrong password fails at once.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backvault.control.catalog.activity import Job
from backvault.control.catalog.models import ProtectedResource, SourceEndpoint
from backvault.control.context import ServiceContext
from backvault.control.events import EventType, record_event
from backvault.control.pagination import paginate
from backvault.control.secrets import SecretError
from backvault.domain.arn import ResourceType
from backvault.domain.errors import (
    AlreadyExistsException,
    DependencyFailureException,
    InvalidParameterValueException,
    InvalidRequestException,
    ResourceNotFoundException,
    expect_mapping,
    expect_str,
)
from backvault.domain.plans import validate_recovery_point_tags
from backvault.sources.base import ConnectorError, EndpointSpec, get_connector

ENVIRONMENT_PREFIX = "env:"
CREDENTIALS_NONE = "NONE"
CREDENTIALS_ENVIRONMENT = "ENVIRONMENT"
CREDENTIALS_STORED = "STORED"
_ENDPOINT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_VARIABLE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Connection settings are shown in every answer: anything that looks like a secret belongs in credentials.
_SECRET_WORDS = ("password", "secret", "passphrase", "token", "private_key")
_ACTIVE_JOB_STATES = ("CREATED", "PENDING", "RUNNING", "ABORTING")


def credentials_context(endpoint_name: str) -> str:
    """The wrapping context of an endpoint's stored credentials (purpose and endpoint)."""
    return f"source-endpoint/{endpoint_name}/credentials"


def register_source_endpoint(
    context: ServiceContext,
    endpoint_name: str,
    endpoint_type: str,
    connection: Mapping[str, Any],
    *,
    credentials: Mapping[str, str] | str | None = None,
    credentials_reference: str | None = None,
    default_tags: Mapping[str, str] | None = None,
    check: bool = True,
) -> dict[str, Any]:
    """Register an endpoint (checked with its connector unless check=False) and return its description."""
    credentials, credentials_reference = _split_credentials(credentials, credentials_reference)
    name = validate_endpoint_name(endpoint_name)
    kind = _endpoint_type(endpoint_type)
    settings = _connection(connection)
    tags = validate_recovery_point_tags(default_tags or {}, "DefaultTags")
    secrets = _credentials(credentials, credentials_reference)
    if check:
        _check(EndpointSpec(name, kind, settings, _resolve(secrets, credentials_reference, name), tags))
    with context.catalog.transaction() as session:
        if session.get(SourceEndpoint, name) is not None:
            raise AlreadyExistsException(f"Source endpoint {name!r} already exists; update or delete it.")
        row = SourceEndpoint(
            name=name,
            endpoint_type=kind.value,
            connection=settings,
            credentials_reference=_stored_reference(context, name, secrets, credentials_reference),
            default_tags=tags,
            creation_date=context.now(),
        )
        session.add(row)
        try:
            session.flush()
        except IntegrityError:
            raise AlreadyExistsException(f"Source endpoint {name!r} already exists.") from None
        record_event(
            session,
            EventType.SOURCE_ENDPOINT_REGISTERED,
            row.creation_date,
            detail={"EndpointName": name, "EndpointType": kind.value},
        )
        return endpoint_to_aws(row)


def describe_source_endpoint(context: ServiceContext, endpoint_name: str) -> dict[str, Any]:
    """Return one endpoint's description (never its credentials)."""
    with context.catalog.transaction() as session:
        return endpoint_to_aws(get_endpoint_row(session, endpoint_name))


def list_source_endpoints(
    context: ServiceContext,
    *,
    by_endpoint_type: str | None = None,
    next_token: str | None = None,
    max_results: int | None = None,
) -> dict[str, Any]:
    """List endpoints by name, optionally of one type."""
    statement = select(SourceEndpoint)
    if by_endpoint_type is not None:
        statement = statement.where(SourceEndpoint.endpoint_type == _endpoint_type(by_endpoint_type).value)
    with context.catalog.transaction() as session:
        rows, token = paginate(
            session,
            statement,
            [SourceEndpoint.name],
            operation="ListSourceEndpoints",
            next_token=next_token,
            max_results=max_results,
        )
        response: dict[str, Any] = {"SourceEndpoints": [endpoint_to_aws(row) for row in rows]}
        if token:
            response["NextToken"] = token
        return response


def update_source_endpoint(
    context: ServiceContext,
    endpoint_name: str,
    *,
    connection: Mapping[str, Any] | None = None,
    credentials: Mapping[str, str] | str | None = None,
    credentials_reference: str | None = None,
    clear_credentials: bool = False,
    default_tags: Mapping[str, str] | None = None,
    check: bool = True,
) -> dict[str, Any]:
    """Change an endpoint's connection, credentials or default tags (its type is fixed)."""
    credentials, credentials_reference = _split_credentials(credentials, credentials_reference)
    if clear_credentials and (credentials is not None or credentials_reference is not None):
        raise InvalidRequestException("Give new credentials or clear them, not both.")
    new_secrets = _credentials(credentials, credentials_reference)
    with context.catalog.transaction() as session:
        row = get_endpoint_row(session, endpoint_name)
        kind = ResourceType(row.endpoint_type)
        settings = dict(row.connection) if connection is None else _connection(connection)
        tags = (
            dict(row.default_tags)
            if default_tags is None
            else validate_recovery_point_tags(default_tags, "DefaultTags")
        )
        old_reference = row.credentials_reference
    if check:
        if credentials is not None or credentials_reference is not None:
            resolved = _resolve(new_secrets, credentials_reference, row.name)
        elif clear_credentials:
            resolved = {}
        else:
            resolved = resolve_credentials(context, row.name, old_reference)
        _check(EndpointSpec(row.name, kind, settings, resolved, tags))
    with context.catalog.transaction() as session:
        row = get_endpoint_row(session, endpoint_name, for_update=True)
        row.connection = settings
        row.default_tags = tags
        if clear_credentials:
            row.credentials_reference = None
        elif credentials is not None or credentials_reference is not None:
            row.credentials_reference = _stored_reference(
                context, row.name, new_secrets, credentials_reference
            )
        session.flush()
        return endpoint_to_aws(row)


def delete_source_endpoint(context: ServiceContext, endpoint_name: str) -> dict[str, Any]:
    """Delete an endpoint; its resources stay listed (their recovery points outlive it), detached."""
    with context.catalog.transaction() as session:
        row = get_endpoint_row(session, endpoint_name, for_update=True)
        arns = select(ProtectedResource.arn).where(ProtectedResource.endpoint_name == row.name)
        busy = session.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.resource_arn.in_(arns), Job.state.in_(_ACTIVE_JOB_STATES))
        )
        if busy:
            raise InvalidRequestException(
                f"Source endpoint {row.name!r} cannot be deleted while {busy} job(s) use its resources; wait "
                "for them to finish or stop them."
            )
        session.execute(
            update(ProtectedResource)
            .where(ProtectedResource.endpoint_name == row.name)
            .values(endpoint_name=None)
        )
        session.delete(row)
        record_event(
            session,
            EventType.SOURCE_ENDPOINT_DELETED,
            context.now(),
            detail={"EndpointName": row.name, "EndpointType": row.endpoint_type},
        )
        return {}


# --- for the other services ----------------------------------------------------------------------


def get_endpoint_row(session: Session, endpoint_name: str, *, for_update: bool = False) -> SourceEndpoint:
    """Return an endpoint row (row-locked if asked) or raise ResourceNotFoundException."""
    statement = select(SourceEndpoint).where(SourceEndpoint.name == expect_str(endpoint_name, "EndpointName"))
    row = session.scalars(statement.with_for_update() if for_update else statement).first()
    if row is None:
        raise ResourceNotFoundException(
            f"Source endpoint {endpoint_name!r} does not exist; register it first (list endpoints to see "
            "them)."
        )
    return row


def endpoint_spec(context: ServiceContext, endpoint_name: str) -> EndpointSpec:
    """Return the endpoint as a connector sees it, with its credentials resolved."""
    with context.catalog.transaction() as session:
        row = get_endpoint_row(session, endpoint_name)
        name, kind, reference = row.name, ResourceType(row.endpoint_type), row.credentials_reference
        connection, tags = dict(row.connection), dict(row.default_tags)
    return EndpointSpec(name, kind, connection, resolve_credentials(context, name, reference), tags)


def resolve_credentials(context: ServiceContext, endpoint_name: str, reference: str | None) -> dict[str, str]:
    """Turn a stored reference into credentials: read the environment or unwrap the stored secret."""
    if not reference:
        return {}
    if reference.startswith(ENVIRONMENT_PREFIX):
        return _from_environment(reference, endpoint_name)
    try:
        secret = context.master_secret.unwrap(reference, credentials_context(endpoint_name))
    except SecretError as error:
        raise DependencyFailureException(
            f"The credentials of source endpoint {endpoint_name!r} cannot be opened: {error}"
        ) from None
    document = json.loads(secret.decode("utf-8"))
    return {str(key): str(value) for key, value in document.items()}


def endpoint_to_aws(row: SourceEndpoint) -> dict[str, Any]:
    """Return an endpoint's description; credentials are named by kind only, never shown."""
    body: dict[str, Any] = {
        "EndpointName": row.name,
        "EndpointType": row.endpoint_type,
        "Connection": dict(row.connection),
        "DefaultTags": dict(row.default_tags),
        "CredentialsType": _credentials_type(row.credentials_reference),
        "CreationDate": row.creation_date,
    }
    if row.credentials_reference and row.credentials_reference.startswith(ENVIRONMENT_PREFIX):
        body["CredentialsReference"] = row.credentials_reference
    if row.last_discovery_date is not None:
        body["LastDiscoveryDate"] = row.last_discovery_date
    return body


def validate_endpoint_name(name: Any) -> str:
    """Return the name if it can be an ARN's endpoint segment (1-63 letters, digits, '.', '_', '-')."""
    text = expect_str(name, "EndpointName")
    if not _ENDPOINT_NAME_RE.match(text):
        raise InvalidParameterValueException(
            f"EndpointName {text!r} is not valid: use 1-63 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit."
        )
    return text


# --- helpers -------------------------------------------------------------------------------------


def _endpoint_type(value: Any) -> ResourceType:
    text = expect_str(value, "EndpointType")
    try:
        return ResourceType(text)
    except ValueError:
        known = ", ".join(kind.value for kind in ResourceType)
        raise InvalidParameterValueException(
            f"EndpointType {text!r} is not known; use one of {known}."
        ) from None


def _connection(connection: Any) -> dict[str, Any]:
    body = dict(expect_mapping(connection, "Connection"))
    try:
        json.dumps(body)
    except (TypeError, ValueError):
        raise InvalidRequestException(
            "Connection must be a JSON object (strings, numbers, lists, objects)."
        ) from None
    for key in body:
        lowered = str(key).lower()
        if any(word in lowered for word in _SECRET_WORDS):
            raise InvalidParameterValueException(
                f"Connection setting {key!r} looks like a secret; connection settings are shown in every "
                "answer. Pass it as Credentials (stored encrypted) or a CredentialsReference env:NAME."
            )
    return body


def _split_credentials(
    credentials: Mapping[str, str] | str | None, reference: str | None
) -> tuple[Mapping[str, str] | None, str | None]:
    """Accept ``credentials="env:NAME"`` as the reference it is (what HTTP clients send)."""
    if isinstance(credentials, str):
        if reference is not None:
            raise InvalidRequestException("Give either Credentials or CredentialsReference, not both.")
        return None, credentials
    return credentials, reference


def _credentials(credentials: Mapping[str, str] | None, reference: str | None) -> dict[str, str] | None:
    """Validate the two ways to give credentials; returns the clear credentials, if given."""
    if credentials is not None and reference is not None:
        raise InvalidRequestException("Give either Credentials or CredentialsReference, not both.")
    if reference is not None:
        text = expect_str(reference, "CredentialsReference")
        variable = text[len(ENVIRONMENT_PREFIX) :]
        if not text.startswith(ENVIRONMENT_PREFIX) or not _VARIABLE_RE.match(variable):
            raise InvalidParameterValueException(
                f"CredentialsReference {text!r} is not valid: use env:NAME, naming an environment variable "
                "of the server."
            )
    if credentials is None:
        return None
    body = expect_mapping(credentials, "Credentials")
    result: dict[str, str] = {}
    for key, value in body.items():
        expect_str(key, "Credentials key")
        result[key] = expect_str(value, f"Credentials[{key!r}]")
    if not result:
        raise InvalidParameterValueException("Credentials must not be empty; leave them out instead.")
    return result


def _resolve(secrets: dict[str, str] | None, reference: str | None, name: str) -> dict[str, str]:
    if secrets is not None:
        return secrets
    if reference is not None:
        return _from_environment(reference, name)
    return {}


def _from_environment(reference: str, endpoint_name: str) -> dict[str, str]:
    variable = reference[len(ENVIRONMENT_PREFIX) :]
    value = os.environ.get(variable)
    if value is None:
        raise DependencyFailureException(
            f"Source endpoint {endpoint_name!r} takes its credentials from ${variable}, which is not set in "
            "the server's environment; set it and restart the server."
        )
    stripped = value.strip()
    if stripped.startswith("{"):
        try:
            document = json.loads(stripped)
        except ValueError:
            raise DependencyFailureException(
                f"${variable} (credentials of source endpoint {endpoint_name!r}) starts with '{{' but is not "
                "valid JSON."
            ) from None
        if isinstance(document, dict):
            return {str(key): str(item) for key, item in document.items()}
    return {"password": value}


def _stored_reference(
    context: ServiceContext, name: str, secrets: dict[str, str] | None, reference: str | None
) -> str | None:
    if secrets is not None:
        return context.master_secret.wrap(json.dumps(secrets).encode("utf-8"), credentials_context(name))
    return reference


def _credentials_type(reference: str | None) -> str:
    if not reference:
        return CREDENTIALS_NONE
    return CREDENTIALS_ENVIRONMENT if reference.startswith(ENVIRONMENT_PREFIX) else CREDENTIALS_STORED


def _check(spec: EndpointSpec) -> None:
    """Ask the type's connector whether the endpoint works; its message says what is wrong."""
    try:
        connector = get_connector(spec.endpoint_type)
        connector.check_endpoint(spec)
    except ConnectorError as error:
        raise InvalidParameterValueException(
            f"Source endpoint {spec.name!r} does not work: {error} (register with check disabled to store it "
            "anyway)."
        ) from None
