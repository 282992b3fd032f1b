"""Verification of AWS Signature Version 4 (the Authorization header form), as botocore signs.

The canonical request is rebuilt from the request as it arrived on the wire:

- the path is the raw, still percent-encoded path, dot segments and doubled slashes removed, then
  percent-encoded once more (``quote(path, safe="/~")``): SigV4 for services other than S3 encodes
  the path twice, so ``arn%3Aaws`` in the URL is ``arn%253Aaws`` in the canonical request;
- query parameters are decoded, re-encoded the RFC 3986 way and sorted by key, then value;
- the signed headers are those the Authorization header names, lower-cased, values trimmed, with
  repeated spaces folded;
- the payload hash is the SHA-256 of the body. A client-sent ``X-Amz-Content-SHA256`` must equal
  it: the body is always bound to the signature (no UNSIGNED-PAYLOAD), so a replayed request with
  another body fails.

The credential scope must be ``DATE/REGION/backup/aws4_request`` with the server's region, and the
request time (``X-Amz-Date``, or ``Date``) within 15 minutes of the server's clock. Signatures are
compared in constant time. Error messages carry neither the secret nor the signature.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from urllib.parse import quote, unquote

from backvault.domain.errors import (
    IncompleteSignature,
    InvalidSignatureException,
    MissingAuthenticationTokenException,
    RequestExpired,
)

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE_NAME = "backup"
MAX_CLOCK_SKEW = timedelta(minutes=15)
TIMESTAMP_FORMAT = "%Y%m%dT%H%M%SZ"
_TIMESTAMP_RE = re.compile(r"^\d{8}T\d{6}Z$")
_SCOPE_DATE_RE = re.compile(r"^\d{8}$")
_SIGNATURE_RE = re.compile(r"^[0-9a-f]{64}$")
_HEADER_NAME_RE = re.compile(r"^[a-z0-9!#$%&'*+.^_`|~-]+$")


@dataclass(frozen=True)
class SignedRequest:
    """What an Authorization header states, once parsed (the signature itself is not kept in reprs)."""

    access_key_id: str
    scope_date: str
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str

    def __repr__(self) -> str:
        return (
            f"SignedRequest(access_key_id={self.access_key_id!r}, scope="
            f"{self.scope_date}/{self.region}/{self.service}, signed_headers={self.signed_headers!r})"
        )


def lower_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Return headers by lower-case name; repeated headers (if the mapping can tell) joined by ','."""
    result: dict[str, str] = {}
    getlist: Callable[[str], list[str]] | None = getattr(headers, "getlist", None)
    for name in headers:
        lower = name.lower()
        if lower in result:
            continue
        values = getlist(name) if getlist is not None else [headers[name]]
        result[lower] = ",".join(values)
    return result


def parse_authorization(headers: Mapping[str, str]) -> SignedRequest:
    """Parse the Authorization header; raise MissingAuthenticationToken or IncompleteSignature."""
    value = headers.get("authorization", "")
    if not value.strip():
        raise MissingAuthenticationTokenException("Missing Authentication Token")
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise IncompleteSignature(
            f"Unsupported authorization algorithm {algorithm[:32]!r}: sign requests with AWS Signature "
            f"Version 4 ({ALGORITHM})."
        )
    fields: dict[str, str] = {}
    for part in rest.split(","):
        key, sep, field_value = part.strip().partition("=")
        if sep:
            fields[key.strip()] = field_value.strip()
    missing = [name for name in ("Credential", "SignedHeaders", "Signature") if not fields.get(name)]
    if missing:
        raise IncompleteSignature(
            "Authorization header requires "
            + " and ".join(f"'{name}'" for name in missing)
            + " parameter(s)."
        )
    credential = fields["Credential"].split("/")
    if len(credential) != 5 or credential[4] != "aws4_request" or not _SCOPE_DATE_RE.match(credential[1]):
        raise IncompleteSignature(
            "Authorization header's Credential must be ACCESS_KEY_ID/YYYYMMDD/REGION/SERVICE/aws4_request."
        )
    signed_headers = tuple(fields["SignedHeaders"].split(";"))
    if any(not _HEADER_NAME_RE.match(name) for name in signed_headers):
        raise IncompleteSignature(
            "Authorization header's SignedHeaders must be lower-case names joined by ';'."
        )
    if list(signed_headers) != sorted(set(signed_headers)):
        raise IncompleteSignature("Authorization header's SignedHeaders must be sorted and without repeats.")
    if "host" not in signed_headers:
        raise IncompleteSignature("The 'host' header must be signed (SignedHeaders lacks 'host').")
    if not _SIGNATURE_RE.match(fields["Signature"]):
        raise IncompleteSignature("Authorization header's Signature must be 64 lower-case hex digits.")
    return SignedRequest(
        access_key_id=credential[0],
        scope_date=credential[1],
        region=credential[2],
        service=credential[3],
        signed_headers=signed_headers,
        signature=fields["Signature"],
    )


def request_time(headers: Mapping[str, str]) -> tuple[datetime, str]:
    """Return the request's time and its SigV4 timestamp text, from X-Amz-Date or else Date."""
    amz_date = headers.get("x-amz-date")
    if amz_date is not None:
        if not _TIMESTAMP_RE.match(amz_date):
            raise IncompleteSignature(f"X-Amz-Date {amz_date[:40]!r} is not in the form YYYYMMDDTHHMMSSZ.")
        try:
            moment = datetime.strptime(amz_date, TIMESTAMP_FORMAT).replace(tzinfo=UTC)
        except ValueError:
            raise IncompleteSignature(f"X-Amz-Date {amz_date!r} is not a valid date and time.") from None
        return moment, amz_date
    date = headers.get("date")
    if date is None:
        raise IncompleteSignature(
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."
        )
    try:
        moment = parsedate_to_datetime(date)
    except (TypeError, ValueError):
        raise IncompleteSignature(f"Date header {date[:40]!r} is not an HTTP date.") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    return moment, moment.strftime(TIMESTAMP_FORMAT)


def canonical_uri(raw_path: str) -> str:
    """Return the canonical URI of a raw request path (dot segments removed, encoded once more)."""
    segments: list[str] = []
    for segment in raw_path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    path = "/" + "/".join(segments)
    if raw_path.endswith("/") and segments:
        path += "/"
    return quote(path, safe="/~")


def canonical_query(query_string: str) -> str:
    """Return the canonical query string: pairs decoded, RFC 3986-encoded again, sorted."""
    pairs: list[tuple[str, str]] = []
    for item in query_string.split("&"):
        if not item:
            continue
        key, _, value = item.partition("=")
        pairs.append((_rfc3986(unquote(key)), _rfc3986(unquote(value))))
    return "&".join(f"{key}={value}" for key, value in sorted(pairs))


def _rfc3986(text: str) -> str:
    return quote(text, safe="-_.~")


def canonical_request(
    *,
    method: str,
    raw_path: str,
    query_string: str,
    headers: Mapping[str, str],
    signed_headers: tuple[str, ...],
    payload_hash: str,
) -> str:
    """Return the SigV4 canonical request (headers must be keyed by lower-case name)."""
    lines = []
    for name in signed_headers:
        if name not in headers:
            raise IncompleteSignature(
                f"Header {name!r} is listed in SignedHeaders but absent from the request."
            )
        lines.append(f"{name}:{' '.join(headers[name].split())}")
    return "\n".join(
        [
            method.upper(),
            canonical_uri(raw_path),
            canonical_query(query_string),
            "\n".join(lines) + "\n",
            ";".join(signed_headers),
            payload_hash,
        ]
    )


def signing_key(secret: str, scope_date: str, region: str, service: str) -> bytes:
    """Derive the SigV4 signing key for one day, region and service."""
    key = _hmac(("AWS4" + secret).encode("utf-8"), scope_date)
    for part in (region, service, "aws4_request"):
        key = _hmac(key, part)
    return key


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode("utf-8"), hashlib.sha256).digest()


def verify_request(
    *,
    method: str,
    raw_path: str,
    query_string: str,
    headers: Mapping[str, str],
    body: bytes,
    region: str,
    now: datetime,
    lookup_secret: Callable[[str], str],
) -> SignedRequest:
    """Verify a SigV4-signed request and return what it states; raises the AWS error on any mismatch.

    ``raw_path`` is the path exactly as sent (percent-encoded); ``lookup_secret`` maps an access key
    id to its secret (raising UnrecognizedClientException for an unknown key). The checks that need
    no secret (format, scope, date) run first, so a malformed request never reaches the key store.
    """
    lowered = lower_headers(headers)
    if "authorization" not in lowered and "x-amz-signature=" in query_string.lower():
        raise IncompleteSignature(
            "Presigned URLs (query-string authentication) are not supported: sign requests with the "
            "Authorization header, as the AWS SDKs and CLI do."
        )
    signed = parse_authorization(lowered)
    if signed.service != SERVICE_NAME:
        raise InvalidSignatureException(
            f"Credential should be scoped to correct service: '{SERVICE_NAME}', not {signed.service[:32]!r}."
        )
    if signed.region != region:
        raise InvalidSignatureException(
            f"Credential should be scoped to a valid region: this server signs as {region!r}, not "
            f"{signed.region[:32]!r} (set the client's region to {region!r})."
        )
    moment, timestamp = request_time(lowered)
    if "x-amz-date" not in signed.signed_headers and "date" not in signed.signed_headers:
        raise IncompleteSignature("The request's date header (X-Amz-Date or Date) must be signed.")
    if timestamp[:8] != signed.scope_date:
        raise InvalidSignatureException(
            f"Credential should be scoped to the request's date {timestamp[:8]}, not {signed.scope_date}."
        )
    if abs(now - moment) > MAX_CLOCK_SKEW:
        earliest = (now - MAX_CLOCK_SKEW).strftime(TIMESTAMP_FORMAT)
        latest = (now + MAX_CLOCK_SKEW).strftime(TIMESTAMP_FORMAT)
        raise RequestExpired(
            f"Signature expired: {timestamp} is outside {earliest} - {latest} (the server's time "
            f"{now.strftime(TIMESTAMP_FORMAT)} +/- 15 min); check the client's clock."
        )
    payload_hash = hashlib.sha256(body).hexdigest()
    claimed = lowered.get("x-amz-content-sha256")
    if claimed is not None and not hmac.compare_digest(claimed.strip(), payload_hash):
        raise InvalidSignatureException(
            "The request body does not match its X-Amz-Content-SHA256 (unsigned or streaming payloads "
            "are not accepted)."
        )
    secret = lookup_secret(signed.access_key_id)
    request = canonical_request(
        method=method,
        raw_path=raw_path,
        query_string=query_string,
        headers=lowered,
        signed_headers=signed.signed_headers,
        payload_hash=claimed.strip() if claimed is not None else payload_hash,
    )
    string_to_sign = "\n".join(
        [
            ALGORITHM,
            timestamp,
            f"{signed.scope_date}/{signed.region}/{signed.service}/aws4_request",
            hashlib.sha256(request.encode("utf-8")).hexdigest(),
        ]
    )
    key = signing_key(secret, signed.scope_date, signed.region, signed.service)
    expected = hmac.new(key, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signed.signature):
        raise InvalidSignatureException(
            "The request signature we calculated does not match the signature you provided. Check your "
            "AWS Secret Access Key and signing method."
        )
    return signed
