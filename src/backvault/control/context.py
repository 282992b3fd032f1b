"""What every control-plane service needs: the catalog, the master secret, a clock and ARN settings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from backvault.control.catalog.database import Catalog
from backvault.control.secrets import MasterSecret
from backvault.domain.arn import ArnContext

DEFAULT_LOCATION_NAME = "local"


def system_clock() -> datetime:
    """Return the current time in UTC."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class ServiceContext:
    """Dependencies of the services; tests pass a fixed clock to reach lock dates and lifecycles."""

    catalog: Catalog
    master_secret: MasterSecret
    clock: Callable[[], datetime] = field(default=system_clock)
    partition: str = "aws"
    account: str = "000000000000"
    # Vaults created without a location go here; it is also the region of ARNs not tied to one.
    default_location: str = DEFAULT_LOCATION_NAME

    def __post_init__(self) -> None:
        self.arn_context()  # validates partition, account and the default region once, up front

    def now(self) -> datetime:
        """Return the clock's time in UTC, refusing a clock that returns naive datetimes."""
        moment = self.clock()
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise ValueError(f"the service clock must return timezone-aware datetimes, got {moment!r}")
        return moment.astimezone(UTC)

    def arn_context(self, region: str | None = None) -> ArnContext:
        """Return the ARN settings for ``region`` (a location name), by default the default location."""
        return ArnContext(self.partition, region or self.default_location, self.account)
