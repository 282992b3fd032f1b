"""The dump-tool runner and the database manifest helpers, with real child processes."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import pytest

from backvault.repo.repository import Repository
from backvault.sources import dump_process
from backvault.sources.base import ConnectorError, ConnectorStopped
from backvault.sources.database_manifest import compare_tables, tags_from_comment, validation_outcome
from backvault.sources.dump_process import (
    DumpProcess,
    HeartbeatReader,
    child_environment,
    run_with_input,
    summarize,
)
from backvault.sources.streams import StreamSnapshot, find_file, open_content

PYTHON = sys.executable


def test_tool_output_streams_into_a_snapshot_byte_for_byte(repository: Repository) -> None:
    script = "import sys\nfor i in range(200000): sys.stdout.write(f'row {i}\\n')"
    expected = "".join(f"row {i}\n" for i in range(200000)).encode()
    beats: list[int] = []
    with StreamSnapshot(repository) as builder:
        with DumpProcess(
            [PYTHON, "-c", script], tool="writer", environment=dict(os.environ), heartbeat=beats.append
        ) as tool:
            builder.add_stream("dump", tool.as_stream())
            tool.finish()
        snapshot = builder.commit(paths=["x"], source={"type": "test"})
    with open_content(repository, find_file(repository, snapshot, "dump")) as stream:
        assert stream.read() == expected
    assert beats and beats[0] > 0


def test_a_failing_tool_is_summarised_without_secrets() -> None:
    script = (
        "import sys\nprint('partial output')\n"
        "sys.stderr.write('note: starting\\nERROR: access denied for hunter2\\n')\nsys.exit(3)"
    )
    with DumpProcess(
        [PYTHON, "-c", script], tool="dumper", environment=dict(os.environ), secrets=["hunter2"]
    ) as tool:
        assert tool.read() == b"partial output\n"
        with pytest.raises(ConnectorError) as caught:
            tool.finish()
    message = str(caught.value)
    assert message.startswith("dumper failed (exit code 3): ERROR: access denied for ***")
    assert "hunter2" not in message and "starting" not in message


def test_a_stop_kills_the_tool_at_once() -> None:
    script = "import sys\nwhile True: sys.stdout.write('x' * 65536)"

    def stop(_processed: int) -> None:
        raise ConnectorStopped("stop")

    with DumpProcess(
        [PYTHON, "-c", script], tool="endless", environment=dict(os.environ), heartbeat=stop
    ) as tool:
        with pytest.raises(ConnectorStopped):
            tool.read(1 << 20)
        process = tool._process
        assert process is not None and process.poll() is not None, "the tool still runs after a stop"


def test_a_silent_tool_still_gets_heartbeats(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dump_process, "HEARTBEAT_INTERVAL", 0.1)
    beats: list[int] = []
    script = "import sys, time\ntime.sleep(0.6)\nsys.stdout.write('late')"
    with DumpProcess(
        [PYTHON, "-c", script], tool="slow", environment=dict(os.environ), heartbeat=beats.append
    ) as tool:
        assert tool.read() == b"late"
        tool.finish()
    assert beats[:3] == [0, 0, 0], "no heartbeat while the tool was silent"
    # a loader busy after its input ended (building indexes) is beaten for too
    beats.clear()
    busy = "import sys, time\nsys.stdin.buffer.read()\ntime.sleep(0.6)"
    run_with_input(
        [PYTHON, "-c", busy],
        io.BytesIO(b"x" * 10),
        tool="busy",
        environment=dict(os.environ),
        heartbeat=beats.append,
    )
    assert len(beats) >= 3 and beats[-1] == 10


def test_a_missing_program_is_a_clear_error() -> None:
    tool = DumpProcess(["/nonexistent/missing-tool"], tool="missing-tool", environment={})
    with pytest.raises(ConnectorError, match="could not start missing-tool"):
        tool.__enter__()


def test_run_with_input_feeds_stdin_and_reports_a_failure(tmp_path: Path) -> None:
    output = tmp_path / "copy"
    copy = f"import sys, shutil\nshutil.copyfileobj(sys.stdin.buffer, open({str(output)!r}, 'wb'))"
    data = os.urandom(3 * 1024 * 1024)
    assert run_with_input(
        [PYTHON, "-c", copy], io.BytesIO(data), tool="loader", environment=dict(os.environ)
    ) == len(data)
    assert output.read_bytes() == data
    quits = (
        "import sys\nsys.stdin.read(10)\nsys.stderr.write('ERROR: syntax error at line 1\\n')\nsys.exit(1)"
    )
    with pytest.raises(ConnectorError, match=r"loader failed \(exit code 1\): ERROR: syntax error at line 1"):
        run_with_input([PYTHON, "-c", quits], io.BytesIO(data), tool="loader", environment=dict(os.environ))


def test_heartbeat_reader_counts_and_throttles() -> None:
    beats: list[int] = []
    reader = HeartbeatReader(io.BytesIO(b"a" * 5000), beats.append, bytes_before=100)
    buffer = bytearray(1000)
    total = 0
    while count := reader.readinto(memoryview(buffer)):
        total += count
    assert total == 5000 and reader.bytes_read == 5000
    assert beats == [1100]  # the first read beats; the rest fall inside the interval


def test_child_environment_drops_connection_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGHOST", "elsewhere")
    monkeypatch.setenv("MYSQL_HOST", "elsewhere")
    environment = child_environment({"PGPASSWORD": "pw"})
    assert "PGHOST" not in environment and "MYSQL_HOST" not in environment
    assert environment["PGPASSWORD"] == "pw" and "PATH" in environment


def test_summarize_keeps_the_last_lines_when_no_line_says_error() -> None:
    text = "\n".join(f"line {i}" for i in range(20))
    assert summarize(text) == " | ".join(f"line {i}" for i in range(14, 20))
    assert summarize("") == "no error output"


@pytest.mark.parametrize(
    ("comment", "tags"),
    [
        ('{"backvault": {"tags": {"backup": "daily", "n": 2}}}', {"backup": "daily", "n": "2"}),
        ('{"backup": "daily"}', {"backup": "daily"}),
        ("Customer database", {}),
        ("{not json", {}),
        ('["a"]', {}),
        ('{"backvault": "something else"}', {}),
        (None, {}),
    ],
)
def test_tags_from_comment(comment: str | None, tags: dict[str, str]) -> None:
    assert tags_from_comment(comment) == tags


def test_compare_tables_names_every_difference() -> None:
    expected = {
        "a": {"rows": 1, "checksum": "x"},
        "b": {"rows": 2, "checksum": "y"},
        "c": {"rows": 0, "checksum": "0"},
    }
    actual = {
        "a": {"rows": 1, "checksum": "x"},
        "b": {"rows": 2, "checksum": "z"},
        "d": {"rows": 0, "checksum": "0"},
    }
    problems = compare_tables(expected, actual)
    assert problems == [
        "table c is missing",
        "table d was not in the backup",
        "table b has the same row count but different content",
    ]
    outcome = validation_outcome("db", expected, problems)
    assert not outcome.valid and "table c is missing" in outcome.message
    assert validation_outcome("db", expected, []).valid
