"""S3 bucket connector: discover buckets by their tags, back up objects incrementally, restore, validate."""

from backvault.sources.s3.connector import S3Connector

__all__ = ["S3Connector"]
