"""MySQL and MariaDB databases as resources: see ``connector`` for discovery, tags, backup and restore."""

from backvault.sources.mysql.connector import MysqlConnector

__all__ = ["MysqlConnector"]
