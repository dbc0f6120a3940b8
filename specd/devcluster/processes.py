"""Background processes that outlive the command that started them, and stopping them safely.

Each process runs in its own session (so a Ctrl-C in the terminal that ran `specd dev-cluster up`
does not reach it) with its output in a log file. It is identified by its pid plus its start time
from /proc, so a later `down` never signals an unrelated process that reused the pid.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProcessRecord:
    name: str
    pid: int
    start_ticks: int  # field 22 of /proc/<pid>/stat: start time in clock ticks since boot
    log: str

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> ProcessRecord:
        return cls(**data)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may contain spaces.
    return raw[raw.rindex(")") + 2:].split()


def _start_ticks(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None  # fields[0] is field 3 (state)


def is_alive(record: ProcessRecord) -> bool:
    """True while the recorded process exists, is the same process, and is not a zombie."""
    fields = _stat_fields(record.pid)
    return fields is not None and fields[0] != "Z" and int(fields[19]) == record.start_ticks


def _die_with_parent() -> None:
    # Runs in the child before exec: ask the kernel to SIGKILL it when its parent dies.
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def spawn(name: str, argv: list[str], log: Path, env: dict[str, str] | None = None,
          cwd: Path | None = None,
          die_with_parent: bool = False) -> tuple[subprocess.Popen, ProcessRecord]:
    """Start `argv` in the background with output appended to `log`.

    die_with_parent: for test fixtures, so a killed test run leaves no orphans (Linux only);
    `specd dev-cluster up` leaves it off because its processes must outlive the command.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    preexec = _die_with_parent if die_with_parent and sys.platform == "linux" else None
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                start_new_session=True,
                                preexec_fn=preexec)  # noqa: PLW1509 (only sets PDEATHSIG)
    ticks = _start_ticks(proc.pid)
    if ticks is None:  # exited at once; the caller's readiness check reports the log
        ticks = -1
    return proc, ProcessRecord(name=name, pid=proc.pid, start_ticks=ticks, log=str(log))


def stop(records: list[ProcessRecord], children: dict[int, subprocess.Popen] | None = None,
         grace_s: float = 10.0) -> list[str]:
    """SIGTERM every live process group, wait up to `grace_s`, then SIGKILL the rest.

    `children` maps pid -> Popen for processes this interpreter started (they are reaped here;
    the others are reaped by whoever adopted them). Returns the names that needed SIGKILL.
    """
    children = children or {}
    live = [r for r in records if is_alive(r)]
    for record in live:
        _signal_group(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        for record in live:
            if record.pid in children:
                children[record.pid].poll()
        live = [r for r in live if is_alive(r)]
        if not live:
            break
        time.sleep(0.1)
    killed = []
    for record in live:
        _signal_group(record.pid, signal.SIGKILL)
        killed.append(record.name)
    for record in records:  # only these: the caller may stop its processes in several steps
        proc = children.get(record.pid)
        if proc is None:
            continue
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    return killed


def _signal_group(pid: int, sig: signal.Signals) -> None:
    # Each process leads its own session and group (start_new_session), so the group id is its
    # pid; signalling the group also reaches anything it forked.
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, sig)
