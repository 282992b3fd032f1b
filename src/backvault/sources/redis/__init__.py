"""Redis connector: RDB snapshots over the replication protocol plus key-by-key exports."""

from backvault.sources.redis.connector import RedisConnector

__all__ = ["RedisConnector"]
