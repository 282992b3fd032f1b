"""Catalog tables of API identities: users, their inline policies and their access keys.

A key's secret is stored only wrapped by the server's master secret (purpose and key id bound into
the wrapping), never in clear: the API needs it back to verify signatures, so it cannot be hashed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from backvault.control.catalog.base import Base, JsonDocument

USER_NAME = 64
POLICY_NAME = 128
ACCESS_KEY_ID = 32
STATE = 32


class IamUser(Base):
    """A user of the API (AWS IAM ``User``)."""

    __tablename__ = "iam_users"

    name: Mapped[str] = mapped_column(String(USER_NAME), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(ACCESS_KEY_ID), unique=True)
    arn: Mapped[str] = mapped_column(Text, unique=True)
    creation_date: Mapped[datetime]


class IamUserPolicy(Base):
    """One inline policy of a user (AWS ``PutUserPolicy``)."""

    __tablename__ = "iam_user_policies"

    user_name: Mapped[str] = mapped_column(String(USER_NAME), ForeignKey("iam_users.name"), primary_key=True)
    policy_name: Mapped[str] = mapped_column(String(POLICY_NAME), primary_key=True)
    document: Mapped[dict[str, Any]] = mapped_column(JsonDocument)
    update_date: Mapped[datetime]


class IamAccessKey(Base):
    """An access key of a user; the secret only as a wrapped token."""

    __tablename__ = "iam_access_keys"

    access_key_id: Mapped[str] = mapped_column(String(ACCESS_KEY_ID), primary_key=True)
    user_name: Mapped[str] = mapped_column(String(USER_NAME), ForeignKey("iam_users.name"), index=True)
    wrapped_secret: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(STATE))  # "Active" or "Inactive"
    creation_date: Mapped[datetime]
    last_used_date: Mapped[datetime | None]
    last_used_region: Mapped[str | None] = mapped_column(String(USER_NAME))
