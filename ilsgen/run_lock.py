"""One `ils gen` per run folder at a time: RUN/LOCK.json names the holder.

The lock is taken before anything is written and released at the end (also on errors). A second
`ils gen` on the same output refuses with a message naming the holder. A lock left behind by a
killed run is taken over when it is stale: its holder's process is gone (same host), or its
heartbeat (refreshed every `HEARTBEAT_S` by a daemon thread) is older than `STALE_S`, or it is
this process's own from a run that failed before it could remove it.
On a local store the lock file is created exclusively (O_EXCL); on S3 the holder writes it and
reads it back (last writer wins, the loser sees another token and refuses).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

from ils.errors import UserError
from ils.store import Store

log = logging.getLogger(__name__)

LOCK = "LOCK.json"
HEARTBEAT_S = 15.0
STALE_S = 120.0


class RunLocked(UserError):
    """Another `ils gen` is writing to this run."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_HELD: set[str] = set()  # tokens of the locks this process holds now


def _stale(info: dict[str, Any]) -> bool:
    if info.get("host") == socket.gethostname():
        pid = int(info.get("pid", -1))
        if not _pid_alive(pid) or (pid == os.getpid() and info.get("token") not in _HELD):
            return True  # its process is gone, or it is this process's own, left by a run that failed
    return time.time() - float(info.get("heartbeat", 0)) > STALE_S


class RunLock:
    """`with RunLock(run): ...` holds the run's lock for the block."""

    def __init__(self, run: Store):
        self.run = run
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _info(self) -> dict[str, Any]:
        return {"token": self.token, "host": socket.gethostname(), "pid": os.getpid(), "heartbeat": time.time()}

    def _read(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.run.read_text(LOCK))
        except (OSError, ValueError):
            return None

    def _create(self) -> bool:
        data = json.dumps(self._info())
        if self.run.is_s3:
            self.run.write_text(LOCK, data)
            time.sleep(0.2)
            held = self._read()
            return bool(held) and held.get("token") == self.token
        path = self.run.path(LOCK)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            fh.write(data)
        return True

    def acquire(self) -> None:
        for _ in range(2):
            held = self._read() if self.run.exists(LOCK) else None
            if held is not None and _stale(held):
                log.warning("taking over the stale lock of a run that stopped (host %s, pid %s)", held.get("host"), held.get("pid"))
                self.run.delete(LOCK)
                held = None
            if held is None and self._create():
                _HELD.add(self.token)
                self._thread = threading.Thread(target=self._beat, name="run-lock", daemon=True)
                self._thread.start()
                return
        held = self._read() or {}
        age = time.time() - float(held.get("heartbeat", time.time()))
        raise RunLocked(
            f"another `ils gen` is writing to {self.run.root_uri} (host {held.get('host', '?')}, pid {held.get('pid', '?')}, "
            f"alive {age:.0f} s ago); wait for it to finish, or delete {self.run.uri(LOCK)} if that run is gone")

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                held = json.loads(self.run.read_text(LOCK))
                if held.get("token") != self.token:
                    log.error("the run lock %s was taken by another run", self.run.uri(LOCK))
                    return
                self.run.write_text(LOCK, json.dumps(self._info()))
            except (OSError, ValueError) as exc:  # the store is away for a moment: try again later
                log.warning("cannot refresh the run lock %s: %s", self.run.uri(LOCK), exc)

    def release(self) -> None:
        _HELD.discard(self.token)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            held = self._read()
            if held is not None and held.get("token") == self.token:
                self.run.delete(LOCK)
        except OSError as exc:  # the store is away: the lock is stale once this process ends
            log.warning("cannot remove the run lock %s: %s", self.run.uri(LOCK), exc)

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
