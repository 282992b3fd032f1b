"""Source kinds of the services: a private redis-server, and S3 and DynamoDB on the moto server."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import redis
import test_dynamodb
import test_redis
import test_s3
from contract import closed_port
from source_kinds import POLL_SECONDS, Broken, SourceKind, unique_name

REDIS_PASSWORD = "redis-control-secret-Kp42"
# The big Redis instance: values that make an RDB of about 24 MB, sent for a moment over SYNC.
BIG_VALUES = 6
BIG_VALUE_BYTES = 4_000_000


# --- Redis ------------------------------------------------------------------------------------------


class RedisKind(SourceKind):
    """The logical databases of a private redis-server (with a password); tags in ``backvault:tags``."""

    key = "redis"
    endpoint_type = "Redis"

    def __init__(self, directory: Path) -> None:
        super().__init__()
        self.server = test_redis.RedisServer(directory, REDIS_PASSWORD)
        self.used: set[int] = set()

    def connection(self) -> dict[str, Any]:
        return {"host": "127.0.0.1", "port": self.server.port, "resources": "databases", "timeout": 5}

    def credentials(self) -> dict[str, str]:
        return {"password": REDIS_PASSWORD}

    def client(self, db: int = 0) -> redis.Redis:
        """A client of one database of the private server."""
        return self.server.client(db)

    def make(self, tags: Mapping[str, str]) -> str:
        for db in range(16):
            if db in self.used:
                continue
            with self.client(db) as client:
                if client.dbsize():
                    continue
                self.used.add(db)
                test_redis.fill(client, unique_name())
                if tags:
                    client.hset("backvault:tags", mapping=dict(tags))
            return str(db)
        raise RuntimeError("no empty database left on the private Redis server")

    def exists(self, resource: str) -> bool:
        with self.client(int(resource)) as client:
            return bool(client.dbsize())

    def tamper(self, resource: str) -> None:
        with self.client(int(resource)) as client:
            client.hset("user:1", "name", "Mallory")  # same key count: only the sampled digests tell

    def broken(self) -> dict[str, Broken]:
        unreachable = {**self.connection(), "port": closed_port(), "timeout": 2}
        return {
            "credentials refused": Broken(
                self.connection(), {"password": "not-it-0815"}, "refused the credentials"
            ),
            "server unreachable": Broken(unreachable, self.credentials(), "Cannot reach"),
        }

    def drop(self, resource: str) -> None:
        with self.client(int(resource)) as client:
            client.flushdb()

    killed_reason = "The RDB transfer from"

    def dump_connection(self) -> dict[str, Any]:
        return {**self.connection(), "resources": "instance"}  # the instance's RDB comes over SYNC

    def make_big(self) -> str:
        self.make({})
        with self.client() as client:
            for number in range(BIG_VALUES):  # random: the RDB cannot compress them away
                client.set(f"big:{number}", os.urandom(BIG_VALUE_BYTES))
        return ""  # the instance

    def kill_dump(self, resource: str, finished: threading.Event) -> str:
        # Once the server sends the RDB to the SYNC connection (state send_bulk), CLIENT KILL it.
        with self.client() as client:
            while not finished.is_set():
                replication = client.info("replication")
                states = [value.get("state") for key, value in replication.items() if key.startswith("slave")]
                if "send_bulk" in states:
                    killed = client.client_kill_filter(_type="replica")
                    return f"{killed} replica connection(s) in state send_bulk"
                time.sleep(POLL_SECONDS)
        raise AssertionError("the job ended before the server was seen sending its RDB")

    def close(self) -> None:
        super().close()
        self.server.stop()


# --- S3 ---------------------------------------------------------------------------------------------


class S3Kind(SourceKind):
    """Buckets on the moto server; tags are bucket tags."""

    key = "s3"
    endpoint_type = "S3"

    def __init__(self, endpoint_url: str) -> None:
        super().__init__()
        self.endpoint_url = endpoint_url
        self.s3 = test_s3._client(endpoint_url)

    def connection(self) -> dict[str, Any]:
        return {"endpoint_url": self.endpoint_url, "region": "us-east-1"}

    def credentials(self) -> dict[str, str]:
        return dict(test_s3.CREDENTIALS)

    def make(self, tags: Mapping[str, str]) -> str:
        name = self.track(unique_name())
        self.s3.create_bucket(Bucket=name)
        if tags:
            tag_set = [{"Key": key, "Value": value} for key, value in tags.items()]
            self.s3.put_bucket_tagging(Bucket=name, Tagging={"TagSet": tag_set})
        for number in range(12):
            body = f"object {number}\n".encode() * (number + 1)
            test_s3._put(self.s3, name, f"data/{number:03d}.txt", body, {"n": str(number)})
        return name

    def exists(self, resource: str) -> bool:
        try:
            self.s3.head_bucket(Bucket=resource)
        except self.s3.exceptions.ClientError:
            return False
        return True

    def tamper(self, resource: str) -> None:
        key = "data/005.txt"
        size = self.s3.head_object(Bucket=resource, Key=key)["ContentLength"]
        self.s3.put_object(Bucket=resource, Key=key, Body=b"X" * size)

    def broken(self) -> dict[str, Broken]:
        unreachable = {**self.connection(), "endpoint_url": f"http://127.0.0.1:{closed_port()}"}
        unreachable["connect_timeout"] = 1
        return {
            "credentials missing": Broken(self.connection(), {}, "has no AWS credentials"),
            "server unreachable": Broken(unreachable, self.credentials(), "Cannot reach"),
        }

    def drop(self, resource: str) -> None:
        test_s3._empty_and_delete(self.s3, resource)

    def close(self) -> None:
        super().close()
        self.s3.close()


# --- DynamoDB ---------------------------------------------------------------------------------------


class DynamodbKind(SourceKind):
    """Tables on the moto server; tags are table tags."""

    key = "dynamodb"
    endpoint_type = "DynamoDB"

    def __init__(self, endpoint_url: str) -> None:
        super().__init__()
        self.endpoint_url = endpoint_url
        self.dynamodb = test_dynamodb._client(endpoint_url)

    def connection(self) -> dict[str, Any]:
        return {"endpoint_url": self.endpoint_url, "region": "us-east-1"}

    def credentials(self) -> dict[str, str]:
        return dict(test_dynamodb.CREDENTIALS)

    def make(self, tags: Mapping[str, str]) -> str:
        name = self.track(unique_name())
        test_dynamodb._create_table(self.dynamodb, name, tags)
        return name

    def exists(self, resource: str) -> bool:
        try:
            self.dynamodb.describe_table(TableName=resource)
        except self.dynamodb.exceptions.ResourceNotFoundException:
            return False
        return True

    def tamper(self, resource: str) -> None:
        self.dynamodb.update_item(
            TableName=resource,
            Key={"pk": {"S": "customer#1"}, "sk": {"N": "8"}},
            UpdateExpression="SET score = :s",
            ExpressionAttributeValues={":s": {"N": "-1"}},
        )

    def broken(self) -> dict[str, Broken]:
        unreachable = {**self.connection(), "endpoint_url": f"http://127.0.0.1:{closed_port()}"}
        unreachable["connect_timeout"] = 1
        return {
            "credentials missing": Broken(self.connection(), {}, "has no AWS credentials"),
            "server unreachable": Broken(unreachable, self.credentials(), "Cannot reach"),
        }

    def drop(self, resource: str) -> None:
        with contextlib.suppress(self.dynamodb.exceptions.ResourceNotFoundException):
            self.dynamodb.delete_table(TableName=resource)

    def close(self) -> None:
        super().close()
        self.dynamodb.close()
