"""Validation of report plan documents: ReportDeliveryChannel and ReportSetting, in AWS's shapes.

A delivery channel's S3BucketName names a storage location (see ``reports``); a setting names a known
report template and, for the compliance templates, existing frameworks.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backvault.control.catalog.audit_models import AuditFramework
from backvault.control.catalog.models import StorageLocation
from backvault.control.context import ServiceContext
from backvault.control.locations import get_location_row, validate_location_name
from backvault.control.report_rendering import COMPLIANCE_TEMPLATES, CSV, JSON, REPORT_TEMPLATES
from backvault.domain.errors import (
    InvalidParameterValueException,
    ResourceNotFoundException,
    expect_int,
    expect_list,
    expect_mapping,
    expect_str,
    reject_unknown_members,
    require_member,
)

FORMATS = (CSV, JSON)
DEFAULT_FORMATS = [CSV]
_SETTING_MEMBERS = {
    "ReportTemplate",
    "FrameworkArns",
    "NumberOfFrameworks",
    "Accounts",
    "OrganizationUnits",
    "Regions",
}


def parse_delivery_channel(session: Session, value: Any) -> dict[str, Any]:
    """Validate a ReportDeliveryChannel: S3BucketName must name a storage location."""
    where = "ReportDeliveryChannel"
    body = expect_mapping(value, where)
    reject_unknown_members(body, {"S3BucketName", "S3KeyPrefix", "Formats"}, where)
    bucket = expect_str(require_member(body, "S3BucketName", where), f"{where}.S3BucketName")
    try:
        get_location_row(session, bucket)
    except ResourceNotFoundException:
        known = ", ".join(session.scalars(select(StorageLocation.name).order_by(StorageLocation.name)))
        raise InvalidParameterValueException(
            f"{where}.S3BucketName {bucket!r} is not a storage location: backvault writes reports into a "
            f"storage location, so name one of: {known or 'none (create one first)'}."
        ) from None
    channel: dict[str, Any] = {"S3BucketName": bucket}
    if body.get("S3KeyPrefix"):
        channel["S3KeyPrefix"] = _key_prefix(expect_str(body["S3KeyPrefix"], f"{where}.S3KeyPrefix"))
    formats = DEFAULT_FORMATS
    if body.get("Formats") is not None:
        given = [
            expect_str(item, f"{where}.Formats") for item in expect_list(body["Formats"], f"{where}.Formats")
        ]
        unknown = [item for item in given if item not in FORMATS]
        if unknown or not given:
            raise InvalidParameterValueException(
                f"{where}.Formats takes {' and/or '.join(FORMATS)} (an HTML page is always written too); "
                f"got {', '.join(given) or 'nothing'}."
            )
        formats = [item for item in FORMATS if item in given]
    channel["Formats"] = list(formats)
    return channel


def parse_report_setting(session: Session, context: ServiceContext, value: Any) -> dict[str, Any]:
    """Validate a ReportSetting: a known template, and frameworks exactly for the compliance reports."""
    where = "ReportSetting"
    body = expect_mapping(value, where)
    reject_unknown_members(body, _SETTING_MEMBERS, where)
    template = expect_str(require_member(body, "ReportTemplate", where), f"{where}.ReportTemplate")
    if template not in REPORT_TEMPLATES:
        raise InvalidParameterValueException(
            f"{where}.ReportTemplate {template!r} is not supported; use one of {', '.join(REPORT_TEMPLATES)}."
        )
    setting: dict[str, Any] = {"ReportTemplate": template}
    arns = _strings(body.get("FrameworkArns"), f"{where}.FrameworkArns")
    if template in COMPLIANCE_TEMPLATES:
        if not arns:
            raise InvalidParameterValueException(
                f"{where}.FrameworkArns is required for {template}: list the frameworks to report on."
            )
        known = set(session.scalars(select(AuditFramework.arn).where(AuditFramework.arn.in_(arns))))
        missing = [arn for arn in arns if arn not in known]
        if missing:
            raise InvalidParameterValueException(
                f"{where}.FrameworkArns: no framework has the ARN(s) {', '.join(missing)}."
            )
        setting["FrameworkArns"] = list(dict.fromkeys(arns))
        setting["NumberOfFrameworks"] = len(setting["FrameworkArns"])
    elif arns:
        raise InvalidParameterValueException(
            f"{where}.FrameworkArns applies to {' and '.join(COMPLIANCE_TEMPLATES)} only, not {template}."
        )
    if body.get("NumberOfFrameworks") is not None:
        expect_int(body["NumberOfFrameworks"], f"{where}.NumberOfFrameworks")  # we count them ourselves
    accounts = _strings(body.get("Accounts"), f"{where}.Accounts")
    bad = [item for item in accounts if not (item in ("ROOT", "*") or (item.isdigit() and len(item) == 12))]
    if bad:
        raise InvalidParameterValueException(
            f"{where}.Accounts: {', '.join(bad)} is not an account id (12 digits), ROOT or *."
        )
    regions = _strings(body.get("Regions"), f"{where}.Regions")
    for region in regions:
        if region != "*":
            validate_location_name(region)  # a region is a storage location name
    for key, items in (
        ("Accounts", accounts),
        ("OrganizationUnits", _strings(body.get("OrganizationUnits"), f"{where}.OrganizationUnits")),
        ("Regions", regions),
    ):
        if items:
            setting[key] = items
    return setting


def _key_prefix(text: str) -> str:
    prefix = text.strip("/")
    segments = prefix.split("/")
    if (
        not prefix
        or len(prefix) > 512
        or any(segment in ("", ".", "..") or segment.startswith(".tmp-") for segment in segments)
        or any(ch in prefix for ch in ("\\", "\x00"))
    ):
        raise InvalidParameterValueException(
            f"ReportDeliveryChannel.S3KeyPrefix {text!r} is not valid: use '/'-separated names without "
            "empty, '.' or '..' parts or backslashes (at most 512 characters)."
        )
    return prefix


def _strings(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    return [expect_str(item, where) for item in expect_list(value, where)]
