"""specd.devcluster.processes.stop with real child processes: it stops what it is given, and
waits for nothing else (the dev cluster stops its real node's processes before the others)."""

from __future__ import annotations

import subprocess

from specd.devcluster import processes


class _Recording(subprocess.Popen):
    waited: list[int] = []

    def wait(self, timeout=None):
        self.waited.append(self.pid)
        return super().wait(timeout)


def test_stop_waits_only_for_the_processes_it_stops(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(processes.subprocess, "Popen", _Recording)
    monkeypatch.setattr(_Recording, "waited", [])
    started = [processes.spawn(name, ["sleep", "60"], tmp_path / f"{name}.log") for name in ("first", "second")]
    children = {proc.pid: proc for proc, _ in started}
    (_, first), (_, second) = started
    try:
        assert processes.stop([first], children) == []
        assert not processes.is_alive(first) and processes.is_alive(second)
        assert _Recording.waited == [first.pid]  # the still-running second one was not waited for
    finally:
        processes.stop([second], children)
    assert not processes.is_alive(second)
