"""Keeps worker processes in step on load/unload calls made through the repository API.

A load or unload reaches one worker (the kernel picks it); that worker records the decision in a
small state file shared by all workers and waits until every live worker has applied it, so the
caller's next request finds the same state whichever worker answers.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import time
from pathlib import Path

POLL_SECONDS = 0.05


class WorkerControl:
    """The shared desired state (models unloaded through the API) and each worker's acknowledgement."""

    def __init__(self, state_dir: Path, workers: int) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.workers = workers
        self._state_file = self.state_dir / "desired.json"
        self._seen_mtime = -1

    def publish(self, unloaded: set[str], purge: str | None = None) -> int:
        """Record a new desired state (and count a cache purge of model ``purge``); returns its generation."""
        with open(self.state_dir / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self._data()
            purges = data.get("purges", {})
            if purge is not None:
                purges[purge] = purges.get(purge, 0) + 1
            generation = int(data.get("generation", 0)) + 1
            tmp = self._state_file.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"generation": generation, "unloaded": sorted(unloaded), "purges": purges}))
            tmp.replace(self._state_file)
        return generation

    def _data(self) -> dict:
        try:
            return json.loads(self._state_file.read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def _read(self) -> tuple[int, set[str]]:
        data = self._data()
        return int(data.get("generation", 0)), set(data.get("unloaded", []))

    def purges(self) -> dict[str, int]:
        """How many cache purges each model has had; workers clear their L1 when a count grows."""
        return dict(self._data().get("purges", {}))

    def changed(self) -> tuple[int, set[str]] | None:
        """The desired state when the file changed since the last call, else None (one stat call)."""
        try:
            mtime = self._state_file.stat().st_mtime_ns
        except FileNotFoundError:
            return None
        if mtime == self._seen_mtime:
            return None
        self._seen_mtime = mtime
        return self._read()

    def current(self) -> tuple[int, set[str]]:
        return self._read()

    def ack(self, generation: int) -> None:
        """Say this worker has applied ``generation``."""
        (self.state_dir / f"ack-{os.getpid()}").write_text(str(generation))

    def _acked(self, generation: int) -> int:
        count = 0
        for path in self.state_dir.glob("ack-*"):
            try:
                pid = int(path.name[4:])
                os.kill(pid, 0)
                if int(path.read_text() or 0) >= generation:
                    count += 1
            except (ProcessLookupError, ValueError, FileNotFoundError):
                continue
            except PermissionError:
                count += 1
        return count

    async def wait_applied(self, generation: int, timeout: float = 60.0) -> bool:
        """Wait until every worker applied ``generation``; False when the timeout passed first."""
        until = time.monotonic() + timeout
        while self._acked(generation) < self.workers:
            if time.monotonic() > until:
                return False
            await asyncio.sleep(POLL_SECONDS)
        return True
