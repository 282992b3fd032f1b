"""AWS Backup's error vocabulary, so the HTTP API can return errors that boto3 and the AWS CLI understand.

Each class carries the AWS error code (the ``__type`` boto3 reads), a message meant for a person, and
the HTTP status AWS documents for it. AWS Backup's API reference lists every service-specific error
with status 400 except ``DependencyFailureException`` and ``ServiceUnavailableException`` (500);
``ResourceNotFoundException`` and ``ConflictException`` are 400, not 404/409, and we keep that so that
clients retrying on status behave as they do against AWS. The common errors (authentication,
throttling) follow the AWS "Common Errors" page, except ``AccessDeniedException``: that page says
400, but signed requests denied by IAM come back as 403 on the wire, which is what SDKs and
Terraform are used to.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar


class BackupServiceError(Exception):
    """Base of every error the service reports to a client."""

    code: ClassVar[str] = "InternalFailure"
    http_status: ClassVar[int] = 500
    # "Sender" errors are the caller's to fix; "Receiver" errors are ours (drives retries and logging).
    fault: ClassVar[str] = "Receiver"

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        # Extra members some AWS errors carry (AlreadyExistsException has Arn and CreatorRequestId).
        self.context: dict[str, Any] = dict(context)

    def to_response_body(self) -> dict[str, Any]:
        """Return the rest-json error body AWS Backup sends for this error."""
        body: dict[str, Any] = {"__type": self.code, "Code": self.code, "Message": self.message}
        for key, value in self.context.items():
            if value is not None:
                body[key] = value
        return body

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class _ClientError(BackupServiceError):
    http_status = 400
    fault = "Sender"


class InvalidParameterValueException(_ClientError):
    """A parameter's value is wrong, for example out of range."""

    code = "InvalidParameterValueException"


class InvalidRequestException(_ClientError):
    """The request as a whole is wrong: a parameter of the wrong type, or an operation not allowed now."""

    code = "InvalidRequestException"


class MissingParameterValueException(_ClientError):
    """A required parameter is missing."""

    code = "MissingParameterValueException"


class ResourceNotFoundException(_ClientError):
    """A resource the action needs does not exist."""

    code = "ResourceNotFoundException"


class AlreadyExistsException(_ClientError):
    """The resource to create already exists."""

    code = "AlreadyExistsException"


class LimitExceededException(_ClientError):
    """A limit in the request or the account has been exceeded."""

    code = "LimitExceededException"


class ConflictException(_ClientError):
    """The service is still performing a previous action on the resource; try again later."""

    code = "ConflictException"


class InvalidResourceStateException(_ClientError):
    """The resource is in a state that does not allow the action (for example a job already finished)."""

    code = "InvalidResourceStateException"


class DependencyFailureException(BackupServiceError):
    """A dependency (catalog, storage, a source endpoint) failed, so the action could not complete."""

    code = "DependencyFailureException"
    http_status = 500


class ServiceUnavailableException(BackupServiceError):
    """A temporary failure of the server; the request may be retried."""

    code = "ServiceUnavailableException"
    http_status = 500


class InternalFailure(BackupServiceError):
    """An unexpected error inside the service."""

    code = "InternalFailure"
    http_status = 500


class AccessDeniedException(_ClientError):
    """The caller is authenticated but not allowed to perform the action."""

    code = "AccessDeniedException"
    http_status = 403


class ThrottlingException(_ClientError):
    """Too many requests; the SDKs back off and retry on this code."""

    code = "ThrottlingException"


class UnrecognizedClientException(_ClientError):
    """The access key id is not known to the service."""

    code = "UnrecognizedClientException"
    http_status = 403


class InvalidSignatureException(_ClientError):
    """The request signature does not match the one computed from the secret key."""

    code = "InvalidSignatureException"
    http_status = 403


class IncompleteSignature(_ClientError):
    """The request signature does not conform to AWS Signature Version 4."""

    code = "IncompleteSignature"


class MissingAuthenticationTokenException(_ClientError):
    """The request carries no credentials at all."""

    code = "MissingAuthenticationTokenException"
    http_status = 403


class RequestExpired(_ClientError):
    """The request's timestamp is more than 15 minutes away from the server's clock."""

    code = "RequestExpired"


ERROR_CLASSES: Mapping[str, type[BackupServiceError]] = {
    cls.code: cls
    for cls in (
        InvalidParameterValueException,
        InvalidRequestException,
        MissingParameterValueException,
        ResourceNotFoundException,
        AlreadyExistsException,
        LimitExceededException,
        ConflictException,
        InvalidResourceStateException,
        DependencyFailureException,
        ServiceUnavailableException,
        InternalFailure,
        AccessDeniedException,
        ThrottlingException,
        UnrecognizedClientException,
        InvalidSignatureException,
        IncompleteSignature,
        MissingAuthenticationTokenException,
        RequestExpired,
    )
}


def error_from_code(code: str, message: str, **context: Any) -> BackupServiceError:
    """Rebuild an error from its AWS code (used when an error crosses a process boundary)."""
    cls = ERROR_CLASSES.get(code, InternalFailure)
    return cls(message, **context)


# --- Request-shape checks shared by the domain parsers ------------------------------------------
# AWS answers a wrong type with InvalidRequestException, a missing member with
# MissingParameterValueException and a bad value with InvalidParameterValueException; these helpers
# keep that mapping in one place.


def require_member(data: Mapping[str, Any], key: str, where: str) -> Any:
    """Return data[key], or raise MissingParameterValueException naming the member."""
    if key not in data or data[key] is None:
        raise MissingParameterValueException(f"{where}.{key} is required but was not given.")
    return data[key]


def expect_str(value: Any, where: str) -> str:
    """Return value if it is a string, else raise InvalidRequestException."""
    if not isinstance(value, str):
        raise InvalidRequestException(f"{where} must be a string, got {type(value).__name__}.")
    return value


def expect_int(value: Any, where: str) -> int:
    """Return value if it is an integer (booleans refused), else raise InvalidRequestException."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequestException(f"{where} must be an integer, got {type(value).__name__}.")
    return value


def expect_bool(value: Any, where: str) -> bool:
    """Return value if it is a boolean, else raise InvalidRequestException."""
    if not isinstance(value, bool):
        raise InvalidRequestException(f"{where} must be true or false, got {type(value).__name__}.")
    return value


def expect_list(value: Any, where: str) -> list[Any]:
    """Return value if it is a list, else raise InvalidRequestException."""
    if not isinstance(value, list | tuple):
        raise InvalidRequestException(f"{where} must be a list, got {type(value).__name__}.")
    return list(value)


def expect_mapping(value: Any, where: str) -> Mapping[str, Any]:
    """Return value if it is a JSON object, else raise InvalidRequestException."""
    if not isinstance(value, Mapping):
        raise InvalidRequestException(f"{where} must be an object, got {type(value).__name__}.")
    return value


def reject_unknown_members(data: Mapping[str, Any], allowed: set[str], where: str) -> None:
    """Refuse members we do not know, so a typo in a config file is reported instead of ignored."""
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise InvalidRequestException(
            f"{where} has unknown member(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}."
        )
