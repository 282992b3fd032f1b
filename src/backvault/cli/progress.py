"""A rich progress display on terminals, silent elsewhere."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from backvault.cli.common import err_console, human_bytes


class TaskProgress:
    """Shows counters reported by a long operation; does nothing when disabled."""

    def __init__(self, enabled: bool, label: str) -> None:
        self._label = label
        self._progress: Progress | None = None
        if enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[detail]}"),
                TimeElapsedColumn(),
                console=err_console,
                transient=True,
            )
            self._task = self._progress.add_task(label, total=None, detail="")

    def __enter__(self) -> TaskProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, *args: Any, **fields: Any) -> None:
        """Accepts (done, total), an info object with counters, or keyword counters."""
        if self._progress is None:
            return
        if len(args) == 2 and all(isinstance(value, int) for value in args):
            self._progress.update(self._task, completed=args[0], total=args[1], detail=f"{args[0]}/{args[1]}")
            return
        info = args[0] if args else None
        values = dict(fields)
        if info is not None:
            values.update({k: v for k, v in vars(info).items() if isinstance(v, int | float | str)})
        parts = []
        if "files" in values:
            parts.append(f"{values['files']} files")
        for key in ("bytes_read", "bytes_done", "bytes_written"):
            if key in values:
                parts.append(human_bytes(float(values[key])))
        self._progress.update(self._task, detail=", ".join(parts))
