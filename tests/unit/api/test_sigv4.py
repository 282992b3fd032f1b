"""SigV4 verification against requests signed by botocore's own SigV4Auth."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from backvault.api.sigv4 import canonical_query, canonical_uri, verify_request
from backvault.domain.errors import (
    BackupServiceError,
    IncompleteSignature,
    InvalidSignatureException,
    MissingAuthenticationTokenException,
    RequestExpired,
    UnrecognizedClientException,
)

KEY_ID = "BVKTESTKEY0000000001"
SECRET = "s3cr3t-Value_0123456789abcdefghijklmnop"
ENDPOINT = "http://127.0.0.1:8080"
POINT_PATH = (
    "/backup-vaults/main/recovery-points/arn%3Aaws%3Abackup%3Alocal%3A000000000000%3Arecovery-point%3Aa1"
)


@dataclass
class Wire:
    """A request as the server receives it."""

    method: str
    raw_path: str
    query_string: str
    headers: dict[str, str]
    body: bytes

    def signed_at(self) -> datetime:
        """The X-Amz-Date the client put in."""
        return datetime.strptime(self.headers["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def sign(
    method: str = "POST",
    path: str = "/backup-vaults/main",
    query: str = "",
    body: bytes = b'{"BackupVaultTags":{"team":"ops"}}',
    *,
    key_id: str = KEY_ID,
    secret: str = SECRET,
    region: str = "local",
    service: str = "backup",
    headers: dict[str, str] | None = None,
) -> Wire:
    """Sign a request with botocore exactly as boto3 would, and return what goes on the wire."""
    url = ENDPOINT + path + (f"?{query}" if query else "")
    request = AWSRequest(
        method=method, url=url, data=body, headers={"Content-Type": "application/json", **(headers or {})}
    )
    SigV4Auth(Credentials(key_id, secret), service, region).add_auth(request)
    prepared = request.prepare()
    parts = urlsplit(prepared.url)
    sent = dict(prepared.headers.items())
    sent["Host"] = "127.0.0.1:8080"  # urllib3 adds it from the URL, as botocore assumed when signing
    return Wire(method, parts.path, parts.query, sent, body)


def lookup(secrets: dict[str, str] | None = None) -> Callable[[str], str]:
    """A key store holding the test key."""
    known = secrets if secrets is not None else {KEY_ID: SECRET}

    def find(access_key_id: str) -> str:
        if access_key_id not in known:
            raise UnrecognizedClientException("The security token included in the request is invalid.")
        return known[access_key_id]

    return find


def verify(
    wire: Wire,
    *,
    now: datetime | None = None,
    region: str = "local",
    secret_store: Callable[[str], str] | None = None,
) -> str:
    """Verify a wire request; return the access key id."""
    signed = verify_request(
        method=wire.method,
        raw_path=wire.raw_path,
        query_string=wire.query_string,
        headers=wire.headers,
        body=wire.body,
        region=region,
        now=now or wire.signed_at(),
        lookup_secret=secret_store or lookup(),
    )
    return signed.access_key_id


def test_botocore_signed_requests_verify() -> None:
    assert verify(sign()) == KEY_ID
    assert verify(sign("GET", "/backup-vaults/", "maxResults=2&nextToken=a%2Fb%2Bc%3D%3D", b"")) == KEY_ID
    # Recovery point ARNs travel percent-encoded in the path; SigV4 encodes them once more.
    assert verify(sign("DELETE", POINT_PATH, body=b"")) == KEY_ID
    assert verify(sign("PUT", "/backup/plans/p1/", body=json.dumps({"a": "ü"}).encode())) == KEY_ID
    # Repeated query keys, sorted by value; spaces and unicode in values.
    assert verify(sign("GET", "/x", "b=2&a=z&a=%20y&c=%C3%BC", b"")) == KEY_ID


def test_changed_body_fails() -> None:
    wire = sign()
    wire.body = b'{"BackupVaultTags":{"team":"evil"}}'
    with pytest.raises(InvalidSignatureException, match="signature we calculated does not match"):
        verify(wire)


def test_changed_body_with_its_own_content_hash_header_fails() -> None:
    wire = sign(headers={"X-Amz-Content-SHA256": "0" * 64})
    with pytest.raises(InvalidSignatureException, match="does not match its X-Amz-Content-SHA256"):
        verify(wire)


@pytest.mark.parametrize(
    "change",
    [
        lambda wire: wire.headers.__setitem__("Content-Type", "text/plain"),
        lambda wire: wire.headers.__setitem__("Host", "127.0.0.1:9999"),
        lambda wire: setattr(wire, "method", "PUT"),
        lambda wire: setattr(wire, "raw_path", "/backup-vaults/other"),
        lambda wire: setattr(wire, "query_string", "maxResults=3"),
    ],
    ids=["header", "host", "method", "path", "query"],
)
def test_changed_request_fails(change: Callable[[Wire], None]) -> None:
    wire = sign()
    change(wire)
    with pytest.raises(InvalidSignatureException):
        verify(wire)


def test_wrong_secret_fails() -> None:
    with pytest.raises(InvalidSignatureException):
        verify(sign(secret=SECRET + "x"))


def test_unknown_key_is_unrecognized() -> None:
    with pytest.raises(UnrecognizedClientException):
        verify(sign(key_id="BVKUNKNOWN0000000000"))


def test_dates_more_than_15_minutes_away_are_refused() -> None:
    wire = sign()
    at = wire.signed_at()
    assert verify(wire, now=at + timedelta(minutes=14, seconds=59)) == KEY_ID
    assert verify(wire, now=at - timedelta(minutes=14)) == KEY_ID
    with pytest.raises(RequestExpired, match="Signature expired"):
        verify(wire, now=at + timedelta(minutes=16))
    with pytest.raises(RequestExpired):
        verify(wire, now=at - timedelta(minutes=16))


def test_wrong_region_or_service_in_the_scope_fails() -> None:
    with pytest.raises(InvalidSignatureException, match="region: this server signs as 'local'"):
        verify(sign(region="us-east-1"))
    with pytest.raises(InvalidSignatureException, match="this server signs as 'eu-west-3'"):
        verify(sign(), region="eu-west-3")
    with pytest.raises(InvalidSignatureException, match="correct service: 'backup'"):
        verify(sign(service="s3"))


def test_missing_and_malformed_authorization() -> None:
    wire = sign()
    del wire.headers["Authorization"]
    with pytest.raises(MissingAuthenticationTokenException):
        verify(wire)
    presigned = sign("GET", "/backup-vaults/", "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=abc", b"")
    del presigned.headers["Authorization"]
    with pytest.raises(IncompleteSignature, match="Presigned URLs"):
        verify(presigned)
    for broken, expected in [
        ("AWS3 Credential=x", "Unsupported authorization algorithm"),
        ("AWS4-HMAC-SHA256 Credential=a/b/c", "requires 'SignedHeaders' and 'Signature'"),
        (
            "AWS4-HMAC-SHA256 Credential=K/2025/local/backup/aws4_request, SignedHeaders=host;x-amz-date, "
            "Signature=" + "a" * 64,
            "Credential must be",
        ),
        (
            f"AWS4-HMAC-SHA256 Credential={KEY_ID}/20250101/local/backup/aws4_request, "
            "SignedHeaders=x-amz-date, Signature=" + "a" * 64,
            "'host' header must be signed",
        ),
        (
            f"AWS4-HMAC-SHA256 Credential={KEY_ID}/20250101/local/backup/aws4_request, "
            "SignedHeaders=host;x-amz-date, Signature=zz",
            "64 lower-case hex digits",
        ),
    ]:
        wire.headers["Authorization"] = broken
        with pytest.raises(IncompleteSignature, match=expected):
            verify(wire)


def test_the_date_must_be_signed_and_match_the_scope() -> None:
    wire = sign()
    del wire.headers["X-Amz-Date"]
    with pytest.raises(IncompleteSignature, match="X-Amz-Date' or a 'Date' header"):
        verify(wire, now=datetime.now(UTC))
    wire = sign()
    wire.headers["Authorization"] = wire.headers["Authorization"].replace(
        f"/{wire.headers['X-Amz-Date'][:8]}/", "/20200101/"
    )
    with pytest.raises(InvalidSignatureException, match="scoped to the request's date"):
        verify(wire)


def test_signing_with_a_date_header_instead_of_x_amz_date() -> None:
    wire = sign(headers={"Date": "Mon, 01 Jan 2024 00:00:00 GMT"})
    assert "X-Amz-Date" not in wire.headers
    # botocore re-dates the request when signing, with "-0000" (no zone): it means UTC.
    moment = parsedate_to_datetime(wire.headers["Date"]).replace(tzinfo=UTC)
    assert verify(wire, now=moment) == KEY_ID


def test_errors_never_carry_the_secret_or_the_signature() -> None:
    wire = sign(secret="another-secret-0123456789")
    signature = wire.headers["Authorization"].rsplit("Signature=", 1)[1]
    with pytest.raises(BackupServiceError) as caught:
        verify(wire)
    shown = caught.value.message + repr(caught.value) + json.dumps(caught.value.to_response_body())
    assert SECRET not in shown and "another-secret" not in shown and signature not in shown


def test_canonical_forms_match_botocore() -> None:
    auth = SigV4Auth(Credentials(KEY_ID, SECRET), "backup", "local")
    for path in ["/", "", "/a/./b/../c//d/", "/arn%3Aaws%3Ax", "/sp ace/~tilde"]:
        request = AWSRequest(method="GET", url=ENDPOINT + path)
        expected = auth._normalize_url_path(urlsplit(request.url).path)
        assert canonical_uri(path) == expected, path
    for query in ["b=2&a=1", "a=%2F&a=%20", "flag", "x=1&x=0"]:
        request = AWSRequest(method="GET", url=f"{ENDPOINT}/?{query}")
        assert canonical_query(query) == auth.canonical_query_string(request), query
