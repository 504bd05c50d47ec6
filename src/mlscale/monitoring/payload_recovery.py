"""After a crash: the payload log's unfinished files are moved aside and counted, never read.

PayloadLog writes each file as ``<stem>.parquet.tmp`` and renames it to ``.parquet`` once its footer is
written, so a finished file is whole even if the process is killed the next instant. A process killed
with a file open leaves the ``.tmp`` behind: a Parquet file without its footer, unreadable, holding the
records sampled since its last roll (at most ``roll_seconds`` of traffic). On start, a payload log
moves every such file of a process that no longer runs into ``<directory>/_quarantine/`` (kept for
inspection, out of the readers' way) and returns how many it moved. Files of live processes (other
workers sharing the folder) are left alone: their writers still own them.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

log = logging.getLogger("mlscale.monitoring.payload_log")

QUARANTINE = "_quarantine"
# <model>-<millis>-<pid>-<seq>.parquet.tmp (see payload_log._ModelFile)
_ORPHAN = re.compile(r"-\d+-(\d+)-\d+\.parquet\.tmp$")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def quarantine_orphans(directory: str | Path) -> int:
    """Move unfinished files of dead writers under ``directory`` into its quarantine; their count."""
    root = Path(directory)
    moved = 0
    for path in root.glob("*/*.parquet.tmp"):
        if path.parent.name == QUARANTINE:
            continue
        match = _ORPHAN.search(path.name)
        if match is None or _running(int(match.group(1))):
            continue
        target = root / QUARANTINE / path.parent.name
        target.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(path, target / path.name)
        except FileNotFoundError:  # another worker starting at the same time moved it first
            continue
        moved += 1
    if moved:
        log.warning("moved %d unfinished payload log file(s) of killed processes to %s", moved, root / QUARANTINE)
    return moved
