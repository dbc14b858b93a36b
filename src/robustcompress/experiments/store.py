"""Results store: one SQLite file per run directory (standard library only).

Tables
------
``results``  one row per (variant, attack, protocol, norm, eps, run) with all its figures.
``metrics``  one row per (variant, key): compression, calibration, vulnerability, ... figures.
``units``    which units of work are finished; a unit's rows and its "done" mark are written in
             one transaction, so a crash (Ctrl-C, kill -9) loses at most the unit in progress and a
             re-run never duplicates rows.

Every row carries the hash of the unit's own configuration (``unit``), so changing one part of a
config re-runs only what depends on it. Rows are unique per unit: two configs run into one
folder keep both their rows (readers select the units of the config they show), and two
attacks with the same name but other parameters never replace each other. Stores written
before this rule (rows unique per variant/attack/eps) are migrated when opened.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

SCHEMA = """
CREATE TABLE IF NOT EXISTS units (
    unit TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    label TEXT NOT NULL,
    finished_at REAL NOT NULL,
    seconds REAL
);
CREATE TABLE IF NOT EXISTS results (
    unit TEXT NOT NULL,
    variant TEXT NOT NULL,
    attack TEXT NOT NULL,
    protocol TEXT NOT NULL,
    norm TEXT NOT NULL,
    eps REAL NOT NULL,
    eps_label TEXT NOT NULL,
    run INTEGER NOT NULL,
    n INTEGER NOT NULL,
    clean_acc REAL,
    robust_acc REAL,
    fooled_any REAL,
    mean_norm REAL,
    median_norm REAL,
    seconds REAL,
    extra TEXT,
    UNIQUE (unit, variant, attack, protocol, norm, eps_label, run)
);
CREATE TABLE IF NOT EXISTS metrics (
    unit TEXT NOT NULL,
    variant TEXT NOT NULL,
    key TEXT NOT NULL,
    value REAL,
    extra TEXT,
    UNIQUE (unit, variant, key)
);
"""

METRIC_COLUMNS = ("unit", "variant", "key", "value", "extra")
RESULT_COLUMNS = ("unit", "variant", "attack", "protocol", "norm", "eps", "eps_label", "run", "n",
                  "clean_acc", "robust_acc", "fooled_any", "mean_norm", "median_norm", "seconds", "extra")


@dataclass
class ResultRow:
    variant: str
    attack: str
    protocol: str  # "paper" | "adaptive" | "minimal" | "clean"
    norm: str
    eps: float
    eps_label: str
    run: int
    n: int
    clean_acc: Optional[float] = None
    robust_acc: Optional[float] = None
    fooled_any: Optional[float] = None
    mean_norm: Optional[float] = None
    median_norm: Optional[float] = None
    seconds: Optional[float] = None
    extra: dict[str, Any] = field(default_factory=dict)


def _migrate(conn: sqlite3.Connection) -> None:
    """Rebuild tables created with the old per-variant unique keys (one transaction)."""
    old = {name: sql for name, sql in conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type='table' AND name IN ('results', 'metrics')")}
    stale = [t for t in ("results", "metrics") if "UNIQUE (unit," not in (old.get(t) or "UNIQUE (unit,")]
    if not stale:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for t in stale:
            conn.execute(f"ALTER TABLE {t} RENAME TO {t}_old")
        for stmt in SCHEMA.split(";"):  # executescript would commit the open transaction
            if any(f"EXISTS {t} (" in stmt for t in stale):
                conn.execute(stmt)
        for t in stale:
            conn.execute(f"INSERT INTO {t} SELECT * FROM {t}_old")
            conn.execute(f"DROP TABLE {t}_old")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _clean(v):
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    return v


class ResultsStore:
    """SQLite-backed store. Open once per run; safe to reopen after a crash."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.executescript(SCHEMA)
            _migrate(self.conn)
            self.conn.execute("SELECT count(*) FROM results").fetchone()
        except sqlite3.DatabaseError as e:
            from robustcompress.errors import DataError

            self.conn.close()

            raise DataError(f"results store {self.path} is unreadable ({e}): it was truncated or "
                            "is not a robustcompress store; move it away (finished models are "
                            "kept, evaluations are re-run) or choose another --out") from None

    def close(self) -> None:
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- units ------------------------------------------------------------------------------
    def is_done(self, unit: str) -> bool:
        return self.conn.execute("SELECT 1 FROM units WHERE unit=?", (unit,)).fetchone() is not None

    @contextlib.contextmanager
    def unit(self, unit: str, kind: str, label: str) -> Iterator["_UnitWriter"]:
        """Collect a unit's rows; commit them with the unit's done-mark atomically on success."""
        writer = _UnitWriter(unit)
        t0 = time.perf_counter()
        yield writer
        seconds = time.perf_counter() - t0
        cur = self.conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            # A unit re-run after its rows were written but before the mark (impossible with one
            # transaction, but cheap to guard) replaces its own rows.
            cur.execute("DELETE FROM results WHERE unit=?", (unit,))
            cur.execute("DELETE FROM metrics WHERE unit=?", (unit,))
            for r in writer.results:
                cur.execute(
                    "INSERT OR REPLACE INTO results VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (unit, r.variant, r.attack, r.protocol, r.norm, float(r.eps), r.eps_label, r.run,
                     r.n, _clean(r.clean_acc), _clean(r.robust_acc), _clean(r.fooled_any),
                     _clean(r.mean_norm), _clean(r.median_norm), _clean(r.seconds),
                     json.dumps(r.extra, default=float)),
                )
            for variant, key, value, extra in writer.metrics:
                cur.execute("INSERT OR REPLACE INTO metrics VALUES (?,?,?,?,?)",
                            (unit, variant, key, _clean(value), json.dumps(extra, default=float)))
            cur.execute("INSERT OR REPLACE INTO units VALUES (?,?,?,?,?)",
                        (unit, kind, label, time.time(), seconds))
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise

    # -- queries ----------------------------------------------------------------------------
    def results(self, *, variant: Optional[str] = None, attack: Optional[str] = None,
                protocol: Optional[str] = None, units: Optional[Iterable[str]] = None) -> list[dict]:
        """Result rows, filtered (``*`` is a wildcard) and restricted to ``units`` if given."""
        return self._select("results", RESULT_COLUMNS, units,
                            variant=variant, attack=attack, protocol=protocol)

    def metrics(self, *, variant: Optional[str] = None, units: Optional[Iterable[str]] = None) -> list[dict]:
        """Per-variant metric rows, filtered like :meth:`results`."""
        return self._select("metrics", METRIC_COLUMNS, units, variant=variant)

    def _select(self, table: str, columns: tuple[str, ...], units: Optional[Iterable[str]],
                **filters: Optional[str]) -> list[dict]:
        q = f"SELECT {', '.join(columns)} FROM {table} WHERE 1=1"
        args: list[Any] = []
        for col, val in filters.items():
            if val is not None:
                q += f" AND {col} LIKE ?"
                args.append(val.replace("*", "%"))
        rows = [dict(zip(columns, r)) for r in self.conn.execute(q + " ORDER BY rowid", args)]
        if units is not None:
            keep = set(units)
            rows = [r for r in rows if r["unit"] in keep]
        for r in rows:
            r["extra"] = json.loads(r["extra"] or "{}")
        return rows

    def unit_table(self) -> list[dict]:
        cols = ("unit", "kind", "label", "finished_at", "seconds")
        return [dict(zip(cols, r)) for r in self.conn.execute("SELECT * FROM units ORDER BY finished_at")]


class _UnitWriter:
    def __init__(self, unit: str):
        self.unit = unit
        self.results: list[ResultRow] = []
        self.metrics: list[tuple[str, str, Optional[float], dict]] = []

    def add_result(self, row: ResultRow) -> None:
        self.results.append(row)

    def add_metric(self, variant: str, key: str, value: Optional[float], extra: Optional[dict] = None) -> None:
        self.metrics.append((variant, key, None if value is None else float(value), extra or {}))


def export_rows(rows: list[dict], path: str | Path) -> Path:
    """Write rows to ``.csv`` or ``.json`` (chosen by the suffix)."""
    path = Path(path)
    if path.suffix == ".json":
        path.write_text(json.dumps(rows, indent=2, default=float))
    elif path.suffix == ".csv":
        keys = list(rows[0]) if rows else list(RESULT_COLUMNS)
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            for r in rows:
                w.writerow({k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in r.items()})
    else:
        from robustcompress.errors import UserInputError

        raise UserInputError(f"cannot export to {path}: use a .csv or .json file name")
    return path
