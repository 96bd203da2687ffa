"""Which process runs a run, and whether it is known to have ended without saying so.

A run is recorded as `running` when it starts, and its own process records how it ended (completed,
failed, interrupted). A process killed with -9 or by the out-of-memory killer, or one that lost its
PostgreSQL connection, records nothing: its run stayed `running` for good, and the lock-wait line went
on naming it as the holder. So each run records its process: the host name, the pid, and a token that
tells this process from a later one given the same pid (on Linux: the machine id, the boot id, the
pid namespace, and the process's start time, all read from /proc and /etc/machine-id; the two ids
hashed).

A run is known to be over (`gone`) only where this machine can know it:
- the same host, boot and pid namespace, and the pid is no longer that process (none, a zombie, or
  another process since); where /proc is missing (not Linux), the same host and no such pid;
- the same host and machine id, and a boot since: every process of the earlier boot has ended.
A run of another machine (or of another container on this one) is never declared over from here: it
is shown as running on its host, since its start. A writer opening the catalog records the runs it
knows are over as `crashed`; read-only readers (`mlc inspect`, the lock-wait line) show them so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from functools import lru_cache
from pathlib import Path

log = logging.getLogger(__name__)
CRASHED = "crashed"
COLUMNS = "run_id, command, started_at, host, pid, process"     # a running run's process, for `gone`
# Runs started in this process (a collect with curates inside it): what another machine may still be
# about to publish is never this process's own (curate/unpublished.py), nor is the PostgreSQL writer it
# waits for (postgres.running_runs).
RUNS_OF_THIS_PROCESS: set[str] = set()


def read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:     # not Linux, or no such process
        return ""


@lru_cache(maxsize=1)
def kernel() -> tuple[str, str, str]:
    """(machine id, boot id, pid namespace) of this process; empty strings where unknown (read once
    per process: every run a catalog lists is checked against them). The two
    ids are kept as app-specific hashes: machine-id(5) asks that the raw id never leave the machine,
    and a catalog travels (object store, PostgreSQL, `mlc inspect --json`)."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return private(read("/etc/machine-id")), private(read("/proc/sys/kernel/random/boot_id")), namespace


def private(host_id: str) -> str:
    "A stable stand-in for a host's id that does not reveal it ('' stays '')."
    return hashlib.sha256(f"mlc-pipeline run owner:{host_id}".encode()).hexdigest()[:16] if host_id else ""


def started(pid: int) -> str:
    """The process's start time (clock ticks since boot), or '' when there is no such live process."""
    stat = read(f"/proc/{pid}/stat")
    fields = stat.rsplit(")", 1)[-1].split() if stat else []
    return fields[19] if len(fields) > 19 and fields[0] not in ("Z", "X") else ""


def process_token(pid: int) -> str:
    return "/".join((*kernel(), started(pid)))


def this_process() -> dict:
    """What a run records about the process that runs it."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "process": process_token(os.getpid())}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:      # someone else's
        return True
    return True


def gone(run: dict) -> bool:
    """Whether this machine knows the process of a run recorded as running has ended."""
    if run.get("status", "running") != "running" or not run.get("pid") or run.get("host") != socket.gethostname():
        return False
    recorded = (run.get("process") or "").split("/")
    if len(recorded) != 4:
        return False            # not a token this version wrote
    machine, boot, namespace = kernel()
    if not boot:                # no /proc here (nor when it was recorded, on this host): the pid alone
        return not recorded[1] and not alive(int(run["pid"]))
    if recorded[1] == boot:
        return recorded[2] == namespace and started(int(run["pid"])) != recorded[3]
    return bool(machine) and recorded[0] == machine and bool(recorded[1])    # rebooted since


def where(run: dict) -> str:
    """Where a running run runs, as a person reads it."""
    if run.get("host") and run["host"] != socket.gethostname():
        since = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(run["started_at"]))
        return f" (on {run['host']} since {since}, not checked from here)"
    return f" (pid {run['pid']})" if run.get("pid") else ""      # recorded before runs named their process


def describe(rows, idle: str, leave_out: set[str] | frozenset[str] = frozenset()) -> str:
    """The runs recorded as running, for a lock-wait line: those whose process is known gone apart, and
    `leave_out` left out (PostgreSQL's line: the waiting process's own runs, RUNS_OF_THIS_PROCESS)."""
    rows = [dict(r) for r in rows if r["run_id"] not in leave_out]
    ended = [gone(r) for r in rows]
    over = [r for r, end in zip(rows, ended) if end]
    live = [r for r, end in zip(rows, ended) if not end]
    text = ("runs recorded as running: " + ", ".join(f"{r['command']} {r['run_id']}{where(r)}" for r in live)
            if live else idle)
    if over:
        text += "; runs whose process is gone (killed): " + ", ".join(f"{r['command']} {r['run_id']}" for r in over)
    return text


def shown(run: dict) -> dict:
    """A run as a reader shows it: one known to be over is `crashed`, even before a writer records it."""
    return {**run, "status": CRASHED} if gone(run) else run


def end_crashed(db, ends: Path | None = None) -> list[str]:
    """Record as `crashed` the runs recorded as running on this host whose process is known gone; one
    that left its end in `ends` (its catalog's disk was full: `finish`) as it ended."""
    rows = db.execute(f"SELECT {COLUMNS} FROM runs WHERE status='running' AND host=?",
                      (socket.gethostname(),)).fetchall()
    over = [dict(r) for r in rows if gone(dict(r))]
    for r in over:
        status, summary = left_end(ends, r["run_id"]) or (CRASHED, json.dumps(
            {"error": "its process ended without recording it (killed)", "pid": r["pid"]}))
        db.execute("UPDATE runs SET status=?, finished_at=?, summary=? WHERE run_id=? AND status='running'",
                   (status, time.time(), summary, r["run_id"]))
        forget_end(ends, r["run_id"])
        log.info("run %s %s (pid %s) ended without recording it (%s): recorded as %s", r["command"], r["run_id"],
                 r["pid"], "its catalog's disk was full" if status != CRASHED else
                 "killed, out of memory, or its catalog connection lost", status)
    return [r["run_id"] for r in over]


# A run's end where the catalog's disk is full (collect28). Writing `failed` into the catalog needs room
# there, and the next command then recorded the run `crashed`. So a SQLite catalog's run gets a file of
# END_BYTES in `<catalog's folder>/runs/` as it starts, while there is room; an end the catalog cannot
# take is written over it in place (no block to allocate on tmpfs or ext4; a copy-on-write file system
# may still refuse it, and the run is then `crashed` as before), and the next writer records it.
END_BYTES = 2048


def reserve_end(ends: Path | None, run_id: str) -> None:
    if ends is None:        # PostgreSQL: the server's disk is not this one
        return
    try:
        ends.mkdir(exist_ok=True)
        (ends / f"{run_id}.end").write_bytes(b" " * END_BYTES)
    except OSError as exc:  # no room even for this: the run goes on; a full catalog ends it `crashed`, as before
        forget_end(ends, run_id)
        log.warning("no room kept for run %s's end record in %s (%s): if the catalog's disk fills, the next "
                    "command records the run as crashed", run_id, ends, exc)


def finish(db, ends: Path | None, run_id: str, status: str, summary: dict | None) -> None:
    """Record how a run ended; when the catalog's disk is full, in its reserved file (`reserve_end`)."""
    from .schema import CatalogFull
    text = json.dumps(summary or {}, sort_keys=True)
    try:
        db.execute("UPDATE runs SET finished_at=?, status=?, summary=? WHERE run_id=?",
                   (time.time(), status, text, run_id))
    except CatalogFull:
        end = json.dumps([status, text]).encode()
        if len(end) > END_BYTES:        # a long summary: its error line is what matters (escaped, it can grow)
            end = json.dumps([status, json.dumps({"error": str((summary or {}).get("error", ""))[:500]})]).encode()
        if ends is not None and (ends / f"{run_id}.end").exists() and len(end) <= END_BYTES:
            try:
                with open(ends / f"{run_id}.end", "r+b") as f:
                    f.write(end.ljust(END_BYTES))
            except OSError as exc:      # a copy-on-write disk may refuse even this: the full catalog's line stays
                log.warning("run %s's end record could not be kept in %s (%s): the next command records it "
                            "as crashed", run_id, ends, exc)
        raise
    forget_end(ends, run_id)


def forget_end(ends: Path | None, run_id: str) -> None:
    """The run's reserved file gone (a `runs` that is not a folder never held one)."""
    if ends is not None and ends.is_dir():
        (ends / f"{run_id}.end").unlink(missing_ok=True)


def left_end(ends: Path | None, run_id: str) -> tuple[str, str] | None:
    """(status, summary) a run left in its reserved file, or None (none, or still blank)."""
    try:
        text = (ends / f"{run_id}.end").read_text().strip() if ends is not None else ""
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        end = json.loads(text) if text else None
    except ValueError:
        end = text
    if end is None or (isinstance(end, list) and len(end) == 2 and all(isinstance(x, str) for x in end)):
        return tuple(end) if end else None
    # not what `finish` writes: the run is `crashed`, and the file said so
    log.warning("%s: not a run's end record (%r...): run %s recorded as %s", ends, text[:40], run_id, CRASHED)
    return None


def fail_completed(db, run_ids: list[str], error: str) -> list[str]:
    """Record the runs of `run_ids` recorded `completed` as `failed`, `error` added to their summary (their
    work could not be published: sync's publish); the runs so recorded."""
    failed = []
    for run_id in run_ids:
        row = db.execute("SELECT command, summary FROM runs WHERE run_id=? AND status='completed'",
                         (run_id,)).fetchone()
        if row is None:
            continue
        try:
            summary = json.loads(row["summary"] or "{}")
        except ValueError:      # not JSON (written by hand): kept under its own key
            summary = {"summary": row["summary"]}
        summary = {**(summary if isinstance(summary, dict) else {"summary": summary}), "error": error}
        db.execute("UPDATE runs SET status='failed', summary=? WHERE run_id=? AND status='completed'",
                   (json.dumps(summary, sort_keys=True), run_id))
        failed.append(f"{row['command']} {run_id}")
    return failed
