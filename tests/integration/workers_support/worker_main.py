"""Entry point of a worker subprocess: ``python -m workers_support.worker_main DATA_DIR URL LEASE COUNT``.

It runs until SIGTERM (run_worker_process turns it into a clean stop), with the overlap-detecting
test handlers passed explicitly.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from backvault.control.worker import run_worker_process
from workers_support.handlers import HANDLERS


def main(arguments: list[str]) -> None:
    """Parse the arguments and run the workers."""
    data_dir, database_url, lease_seconds, worker_count = arguments
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(threadName)s %(name)s %(message)s")
    run_worker_process(
        Path(data_dir),
        database_url,
        worker_count=int(worker_count),
        handlers=HANDLERS,
        lease_seconds=float(lease_seconds),
        poll_seconds=0.1,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
