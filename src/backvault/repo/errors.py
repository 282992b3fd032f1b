"""Errors raised by the repository layer; each message says what is wrong and what to do."""

from __future__ import annotations


class RepositoryError(Exception):
    """Base class for repository problems."""


class RepositoryNotFoundError(RepositoryError):
    """The location holds no repository."""

    def __init__(self, location: str, detail: str = "") -> None:
        hint = "; create one with 'backvault repo init' or check --repo"
        super().__init__(f"no backvault repository at {location}{': ' + detail if detail else ''}{hint}")


class RepositoryExistsError(RepositoryError):
    """init was pointed at a location that already holds data."""

    def __init__(self, location: str) -> None:
        super().__init__(f"{location} already contains a repository or other files; choose an empty location")


class WrongPasswordError(RepositoryError):
    """No key of the repository opens with the given passphrase."""

    def __init__(self, tried: int, damaged: list[str]) -> None:
        message = f"wrong passphrase: none of the repository's {tried} key(s) opens with it"
        if damaged:
            message += f" (damaged key objects: {', '.join(damaged)}; run 'backvault repo check')"
        super().__init__(message + "; set BACKVAULT_PASSWORD or --password-file to the right passphrase")


class DamagedDataError(RepositoryError):
    """An object failed its integrity check (hash mismatch, authentication failure, bad format)."""

    def __init__(self, object_key: str, reason: str, chunk_id: str = "") -> None:
        where = f"chunk {chunk_id} in {object_key}" if chunk_id else object_key
        super().__init__(f"damaged data: {where}: {reason}")
        self.object_key = object_key
        self.chunk_id = chunk_id
        self.reason = reason


class LockConflictError(RepositoryError):
    """Another process holds a lock that excludes this operation."""


class SnapshotNotFoundError(RepositoryError):
    """No snapshot matches the given reference."""

    def __init__(self, reference: str, detail: str = "") -> None:
        super().__init__(
            f"no snapshot matches '{reference}'{': ' + detail if detail else ''}; "
            "list them with 'backvault repo snapshots'"
        )
