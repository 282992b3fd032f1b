"""boto3 clients for an S3 or DynamoDB endpoint, and AWS errors turned into clear ConnectorErrors.

Endpoint connection settings (``EndpointSpec.connection``)::

    endpoint_url   "http://127.0.0.1:5000"  (omit for AWS itself)
    region         "us-east-1" (default)
    addressing_style  "path" (default when endpoint_url is set) or "virtual"   (S3 only)
    verify_tls     true (default)

Credentials come only from ``EndpointSpec.credentials``: ``aws_access_key_id``,
``aws_secret_access_key`` and optionally ``aws_session_token``. They are handed to boto3 in code,
never through the environment or argv, and no message built here contains the secret key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from backvault.sources.base import ConnectorError, EndpointSpec

SessionFactory = Callable[[], Any]

_CREDENTIAL_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "InvalidSignatureException",
    "ExpiredToken",
    "ExpiredTokenException",
    "MissingAuthenticationToken",
    "AuthFailure",
}
_DENIED_CODES = {"AccessDenied", "AccessDeniedException", "AllAccessDisabled", "Forbidden", "403"}


def default_session() -> Any:
    """A fresh boto3 session (one per connector call keeps threads and endpoints apart)."""
    return boto3.session.Session()


def make_client(
    endpoint: EndpointSpec,
    service: str,
    *,
    session_factory: SessionFactory = default_session,
    pool_size: int = 10,
    max_attempts: int = 5,
) -> Any:
    """A boto3 client for ``service`` ("s3" or "dynamodb") configured from the endpoint."""
    connection = endpoint.connection
    access_key = endpoint.credentials.get("aws_access_key_id", "")
    secret_key = endpoint.credentials.get("aws_secret_access_key", "")
    if not access_key or not secret_key:
        raise ConnectorError(
            f"Endpoint {endpoint.name!r} has no AWS credentials: store aws_access_key_id and "
            "aws_secret_access_key in the endpoint's credentials."
        )
    endpoint_url = connection.get("endpoint_url") or None
    options: dict[str, Any] = {
        "region_name": str(connection.get("region") or "us-east-1"),
        "retries": {"max_attempts": max_attempts, "mode": "standard"},
        "connect_timeout": float(connection.get("connect_timeout", 5)),
        "read_timeout": float(connection.get("read_timeout", 60)),
        "max_pool_connections": pool_size,
    }
    if service == "s3":
        style = connection.get("addressing_style") or ("path" if endpoint_url else "auto")
        options["s3"] = {"addressing_style": style}
    session = session_factory()
    try:
        return session.client(
            service,
            endpoint_url=endpoint_url,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            aws_session_token=endpoint.credentials.get("aws_session_token") or None,
            verify=bool(connection.get("verify_tls", True)),
            config=Config(**options),
        )
    except (ValueError, BotoCoreError) as error:
        raise ConnectorError(
            f"Endpoint {endpoint.name!r}: cannot configure a {service} client ({error}); "
            "check endpoint_url and region in the endpoint's connection settings."
        ) from None


def error_code(error: BaseException) -> str:
    """The AWS error code of a ClientError ('' for anything else)."""
    if isinstance(error, ClientError):
        return str(error.response.get("Error", {}).get("Code", ""))
    return ""


def explain(error: BaseException, endpoint: EndpointSpec, doing: str) -> ConnectorError:
    """Turn a boto3/botocore error into a ConnectorError naming the problem and what to do."""
    where = f"endpoint {endpoint.name!r} ({endpoint.connection.get('endpoint_url') or 'AWS'})"
    if isinstance(error, EndpointConnectionError | ConnectTimeoutError | ConnectionClosedError):
        return ConnectorError(
            f"Cannot reach {where} while {doing}: {error}. Check endpoint_url and that the server runs."
        )
    if isinstance(error, ReadTimeoutError):
        return ConnectorError(f"{where} stopped answering while {doing} ({error}); try again later.")
    if isinstance(error, NoCredentialsError):
        return ConnectorError(f"No AWS credentials for {where}: store them in the endpoint's credentials.")
    if isinstance(error, ClientError):
        code = error_code(error)
        message = error.response.get("Error", {}).get("Message", "")
        if code in _CREDENTIAL_CODES:
            return ConnectorError(
                f"{where} refused the credentials while {doing} ({code}): check the endpoint's "
                "aws_access_key_id and aws_secret_access_key."
            )
        if code in _DENIED_CODES:
            return ConnectorError(
                f"Access denied by {where} while {doing} ({code}: {message}); grant the endpoint's "
                "credentials the permission."
            )
        return ConnectorError(f"{where} failed while {doing}: {code}: {message}")
    if isinstance(error, BotoCoreError):
        return ConnectorError(f"{where} failed while {doing}: {error}")
    return ConnectorError(f"{where} failed while {doing}: {type(error).__name__}: {error}")


AWS_ERRORS: tuple[type[BaseException], ...] = (BotoCoreError, ClientError)


class AwsConnectorBase:
    """What the S3 and DynamoDB connectors share: a boto3 client per call, from a session factory."""

    service: str  # the boto3 service name, set by each connector

    def __init__(self, session_factory: SessionFactory = default_session) -> None:
        # A session factory lets callers observe or adjust the boto3 session (tests count requests).
        self.session_factory = session_factory

    def _client(self, endpoint: EndpointSpec, *, pool_size: int = 10, max_attempts: int = 5) -> Any:
        return make_client(
            endpoint,
            self.service,
            session_factory=self.session_factory,
            pool_size=pool_size,
            max_attempts=max_attempts,
        )
