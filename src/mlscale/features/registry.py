"""The registry: applied definitions and materialization watermarks, in SQLite or PostgreSQL.

One SQL schema serves both; only the driver and the parameter style differ. ``apply`` replaces the
whole set of definitions in one transaction (declarative, like ``terraform apply``), so readers see
either the old set or the new one. A view whose online layout changed loses its watermark, because
its old online rows are no longer readable and must be materialized again.
"""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlscale.errors import ConfigError
from mlscale.features.definitions import FeatureRepo

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS mlscale_feature_defs (
        kind TEXT NOT NULL, name TEXT NOT NULL, spec TEXT NOT NULL, layout TEXT NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (kind, name))""",
    """CREATE TABLE IF NOT EXISTS mlscale_feature_watermarks (
        view TEXT PRIMARY KEY, watermark_us BIGINT NOT NULL)""",
)


class ApplyResult:
    """What ``apply`` changed, by "kind name"."""

    def __init__(self, added: list[str], updated: list[str], removed: list[str], unchanged: list[str]):
        self.added, self.updated, self.removed, self.unchanged = added, updated, removed, unchanged


def _where(dsn: str) -> str:
    """Host, port and database of a DSN: never its user or password (errors end up in logs)."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        info = conninfo_to_dict(dsn)
    except Exception:  # an unparsable DSN: say so without echoing it
        return "(an unparsable PostgreSQL URL)"
    return f"{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"


class Registry:
    """Definitions and watermarks kept in a SQLite file or a PostgreSQL database (a DSN)."""

    def __init__(self, target: str | Path) -> None:
        target = str(target)
        self.target = target
        self._postgres = target.startswith(("postgresql://", "postgres://"))
        if self._postgres:
            import psycopg

            try:
                self._conn: Any = psycopg.connect(target, autocommit=False)
            except psycopg.OperationalError as exc:
                raise ConfigError(f"cannot reach the feature registry at {_where(target)}: {exc}") from None
            self._ph = "%s"
        else:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(target, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._ph = "?"
        with self._transaction() as cur:
            for statement in _SCHEMA:
                cur.execute(statement)

    def _transaction(self) -> _Transaction:
        return _Transaction(self)

    def _sql(self, statement: str) -> str:
        return statement.replace("?", self._ph)

    # --- definitions --------------------------------------------------------------------------

    def apply(self, repo: FeatureRepo) -> ApplyResult:
        """Make the registry hold exactly ``repo``'s definitions."""
        new = {(kind, name): spec.decode() for kind, name, spec in repo.to_specs()}
        layouts = {("view", n): layout.prefix.decode() for n, layout in repo.layouts.items()}
        now = time.time()
        with self._transaction() as cur:
            cur.execute(self._sql("SELECT kind, name, spec, layout FROM mlscale_feature_defs"))
            old = {(k, n): (s, lay) for k, n, s, lay in cur.fetchall()}
            added = sorted(f"{k} {n}" for k, n in new.keys() - old.keys())
            removed = sorted(f"{k} {n}" for k, n in old.keys() - new.keys())
            common = new.keys() & old.keys()
            updated = sorted(f"{k} {n}" for k, n in common if new[k, n] != old[k, n][0])
            unchanged = sorted(f"{k} {n}" for k, n in common if new[k, n] == old[k, n][0])
            cur.execute(self._sql("DELETE FROM mlscale_feature_defs"))
            for (kind, name), spec in new.items():
                cur.execute(
                    self._sql("INSERT INTO mlscale_feature_defs VALUES (?, ?, ?, ?, ?)"),
                    (kind, name, spec, layouts.get((kind, name), ""), now),
                )
            # Watermarks of views that are gone or whose online layout changed no longer hold.
            for (kind, name), (_spec, layout) in old.items():
                if kind == "view" and layouts.get((kind, name)) != layout:
                    cur.execute(self._sql("DELETE FROM mlscale_feature_watermarks WHERE view = ?"), (name,))
        return ApplyResult(added, updated, removed, unchanged)

    def load(self) -> FeatureRepo:
        """The applied definitions, compiled; an error when nothing was applied yet."""
        with self._transaction() as cur:
            cur.execute(self._sql("SELECT kind, name, spec FROM mlscale_feature_defs ORDER BY kind, name"))
            rows = cur.fetchall()
        if not rows:
            raise ConfigError(f"the feature registry {self.target} is empty: run `mlscale features apply`")
        return FeatureRepo.from_specs(rows)

    # --- watermarks ---------------------------------------------------------------------------

    def watermark(self, view: str) -> datetime | None:
        """End of the last successful materialization of ``view`` (UTC), or None."""
        with self._transaction() as cur:
            cur.execute(self._sql("SELECT watermark_us FROM mlscale_feature_watermarks WHERE view = ?"), (view,))
            row = cur.fetchone()
        return None if row is None else datetime.fromtimestamp(row[0] / 1e6, UTC)

    def set_watermark(self, view: str, when: datetime) -> None:
        us = round(when.timestamp() * 1e6)
        with self._transaction() as cur:
            cur.execute(self._sql("DELETE FROM mlscale_feature_watermarks WHERE view = ?"), (view,))
            cur.execute(self._sql("INSERT INTO mlscale_feature_watermarks VALUES (?, ?)"), (view, us))

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _Transaction:
    """A cursor inside BEGIN/COMMIT, rolled back on error, for either driver."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def __enter__(self) -> Any:
        conn = self._registry._conn
        self._cur = conn.cursor()
        if not self._registry._postgres:
            self._cur.execute("BEGIN IMMEDIATE")
        return self._cur

    def __exit__(self, exc_type: object, *rest: object) -> None:
        conn = self._registry._conn
        if self._registry._postgres:
            conn.rollback() if exc_type else conn.commit()
        else:
            self._cur.execute("ROLLBACK" if exc_type else "COMMIT")
        self._cur.close()
