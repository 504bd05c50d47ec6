"""Where a model repository's versions come from: a folder on this host, or a model registry.

A source names its models and, for one model, lists its versions as local folders with a
fingerprint each (a changed fingerprint means: load again), plus the aliases it defines and where
unversioned calls go. The repository does the rest (load before switching, drain before unloading)
the same way for every source, so a registry alias moved behaves as a model.toml alias edited.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass
class Listing:
    """One model as its source sees it now."""

    # version -> (local folder holding its files, fingerprint that changes when they change)
    versions: dict[str, tuple[Path, tuple]]
    # Aliases the source defines (a registry's); they win over model.toml's aliases of the same name.
    aliases: dict[str, str] = field(default_factory=dict)
    # Alias or version serving unversioned calls when model.toml sets no traffic split (None: latest).
    default: str | None = None


class ModelSource(Protocol):
    """What the repository asks of a source (the server polls each on its own timer)."""

    def names(self) -> list[str]:
        """The models this source serves (cheap: no network)."""
        ...

    async def listing(self, name: str) -> Listing:
        """The model's versions, fetched (and downloaded) as needed; raises a typed error."""
        ...


def fingerprint(folder: Path) -> tuple:
    """Changes when any file of a version folder changes, so edits on disk trigger a reload."""
    entries = []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            stat = path.stat()
            entries.append((str(path.relative_to(folder)), stat.st_size, stat.st_mtime_ns))
    return tuple(entries)


def _visible(path: Path) -> bool:
    return path.is_dir() and not path.name.startswith((".", "_"))


class FolderSource:
    """``ROOT/<model>/<version>/``: the embedded default, rescanned every ``[server] poll_interval``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if _visible(p))

    async def listing(self, name: str) -> Listing:
        folder = self.root / name
        versions = [p for p in folder.iterdir() if _visible(p)] if folder.is_dir() else []
        return Listing({p.name: (p, fingerprint(p)) for p in versions})
