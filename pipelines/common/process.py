"""Process control shared by training, serving and the benchmarks: /proc reads, TERM-then-KILL, Ctrl-C while
spawning or stopping, a log's tail, and the grace periods.

Training and serving both start long-lived children and must always be able to find and stop them; this is
the one place that says how (Linux /proc; elsewhere the callers fall back to signals alone).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

#: Seconds between SIGTERM and SIGKILL when a user stops a run or a server (`make serve-stop`, Ctrl-C).
STOP_GRACE_S = 30.0
#: Seconds for a process this launcher has just started and must take down again (a failed or cut-short start),
#: and for the servers of tests and benchmarks: nothing of theirs is worth waiting longer for.
QUICK_GRACE_S = 10.0
#: Seconds to wait for the kernel after SIGKILL.
KILL_WAIT_S = 10.0
#: Log lines shown when a child fails.
LOG_TAIL = 30


def proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state [0], parent [1], pgrp [2], start time [19])."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def start_time(pid: int) -> str | None:
    """The start time of `pid` (clock ticks since boot): with the pid, it names one process across pid reuse."""
    stat = proc_stat(pid)
    return stat[19] if stat else None


def is_live(stat: list[str] | None) -> bool:
    return stat is not None and stat[0] not in ("Z", "X")


def _parent_start(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time) of a live process from /proc, or None."""
    fields = proc_stat(pid)
    return (int(fields[1]), fields[19]) if fields and is_live(fields) else None


def descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, start time) of every live descendant of `pid`, parents before children."""
    children: dict[int, list[int]] = {}
    starts = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _parent_start(int(entry.name))):
            children.setdefault(st[0], []).append(int(entry.name))
            starts[int(entry.name)] = st[1]
    out, todo = [], list(children.get(pid, []))
    while todo:
        p = todo.pop(0)
        out.append((p, starts[p]))
        todo += children.get(p, [])
    return out


def signal_all(procs: list[tuple[int, str]], sig: int) -> list[tuple[int, str]]:
    """Send `sig` to those of `procs` that still run as the same process (pid and start time); the ones that do."""
    alive = []
    for pid, started in procs:
        st = _parent_start(pid)
        if st and st[1] == started:
            try:
                os.kill(pid, sig)
                alive.append((pid, started))
            except ProcessLookupError:
                pass
    return alive


def term_then_kill(send: Callable[[int], None], alive: Callable[[], bool], grace: float,
                   poll: float = 0.2) -> bool:
    """`send(SIGTERM)`, wait up to `grace` s for `alive()` to turn false, then `send(SIGKILL)` and wait
    KILL_WAIT_S; True when nothing is left."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, KILL_WAIT_S)):
        send(sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not alive():
                return True
            time.sleep(poll)
    return not alive()


def stop_even_on_ctrl_c(send: Callable[[int], None], alive: Callable[[], bool], grace: float) -> bool:
    """term_then_kill; a Ctrl-C during the grace period skips the rest of it (SIGKILL at once), and no further
    Ctrl-C can cut the stop short."""
    try:
        return term_then_kill(send, alive, grace)
    except KeyboardInterrupt:
        with sigint_ignored():
            return term_then_kill(send, alive, 0.0)


@contextlib.contextmanager
def sigint_ignored() -> Iterator[None]:
    """Ctrl-C ignored for the block (main thread only). Around spawning a child: an ignored signal stays ignored
    across exec, so the child leaves Ctrl-C to its launcher, which stops it properly; around a stop: it cannot
    be cut short."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def log_tail(path: Path, n: int = LOG_TAIL) -> str:
    """The last `n` lines of a log ("" when it cannot be read)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""
