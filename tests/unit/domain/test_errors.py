"""AWS error codes, statuses, response bodies and the request-shape helpers."""

from __future__ import annotations

import pytest

from backvault.domain import errors
from backvault.domain.errors import (
    AccessDeniedException,
    AlreadyExistsException,
    BackupServiceError,
    InvalidRequestException,
    MissingParameterValueException,
    error_from_code,
)


@pytest.mark.parametrize(
    ("cls", "code", "status"),
    [
        (errors.InvalidParameterValueException, "InvalidParameterValueException", 400),
        (errors.InvalidRequestException, "InvalidRequestException", 400),
        (errors.MissingParameterValueException, "MissingParameterValueException", 400),
        (errors.ResourceNotFoundException, "ResourceNotFoundException", 400),
        (errors.AlreadyExistsException, "AlreadyExistsException", 400),
        (errors.LimitExceededException, "LimitExceededException", 400),
        (errors.ConflictException, "ConflictException", 400),
        (errors.InvalidResourceStateException, "InvalidResourceStateException", 400),
        (errors.DependencyFailureException, "DependencyFailureException", 500),
        (errors.ServiceUnavailableException, "ServiceUnavailableException", 500),
        (errors.AccessDeniedException, "AccessDeniedException", 403),
        (errors.ThrottlingException, "ThrottlingException", 400),
        (errors.UnrecognizedClientException, "UnrecognizedClientException", 403),
        (errors.InvalidSignatureException, "InvalidSignatureException", 403),
    ],
)
def test_codes_and_statuses(cls: type[BackupServiceError], code: str, status: int) -> None:
    error = cls("something is wrong")
    assert isinstance(error, BackupServiceError)
    assert (error.code, error.http_status, error.message, str(error)) == (
        code,
        status,
        "something is wrong",
        "something is wrong",
    )
    assert errors.ERROR_CLASSES[code] is cls


def test_response_body_carries_extra_members() -> None:
    error = AlreadyExistsException(
        "vault exists", Arn="arn:aws:backup:local:000000000000:backup-vault:x", Type=None
    )
    assert error.to_response_body() == {
        "__type": "AlreadyExistsException",
        "Code": "AlreadyExistsException",
        "Message": "vault exists",
        "Arn": "arn:aws:backup:local:000000000000:backup-vault:x",
    }


def test_error_from_code() -> None:
    rebuilt = error_from_code("AccessDeniedException", "no")
    assert isinstance(rebuilt, AccessDeniedException)
    assert isinstance(error_from_code("SomethingNew", "?"), errors.InternalFailure)


def test_shape_helpers() -> None:
    with pytest.raises(MissingParameterValueException, match=r"X\.Name is required"):
        errors.require_member({"Name": None}, "Name", "X")
    with pytest.raises(InvalidRequestException, match="must be an integer, got bool"):
        errors.expect_int(True, "X.Days")
    with pytest.raises(InvalidRequestException, match="must be a list, got str"):
        errors.expect_list("a", "X.Items")
    with pytest.raises(InvalidRequestException, match="unknown member"):
        errors.reject_unknown_members({"a": 1, "b": 2}, {"a"}, "X")
    assert errors.expect_int(3, "X") == 3
