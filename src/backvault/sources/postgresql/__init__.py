"""PostgreSQL databases as resources: see ``connector`` for discovery, tags, backup and restore."""

from backvault.sources.postgresql.connector import PostgresqlConnector

__all__ = ["PostgresqlConnector"]
