"""Durable store of generations (SQLite in WAL mode): every generation is committed the moment it
completes, keyed by model, prompt, sampling parameters and slot, so a killed run resumes without
redoing or losing finished work.

``synchronous=NORMAL`` in WAL mode: a commit survives the death of the process (kill -9 included);
only an operating-system crash or power loss may roll back the last commits, which a rerun then
regenerates. FULL would fsync every generation and cap the commit rate at the disk's.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .errors import SymoeError
from .records import Generation, StoredQuestion, generation_key

__all__ = ["Generation", "Store", "generation_key"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS generations (
    key TEXT PRIMARY KEY, model TEXT NOT NULL, question TEXT NOT NULL, role TEXT NOT NULL, slot INTEGER NOT NULL,
    params TEXT NOT NULL, text TEXT NOT NULL, prompt_tokens INTEGER, tokens INTEGER, finish TEXT, created REAL,
    seconds REAL
);
CREATE TABLE IF NOT EXISTS claims (
    key TEXT PRIMARY KEY, owner TEXT NOT NULL, pid INTEGER NOT NULL, created REAL, started REAL
);
CREATE TABLE IF NOT EXISTS questions (
    id TEXT PRIMARY KEY, text TEXT NOT NULL, kind TEXT NOT NULL, gold TEXT NOT NULL, category TEXT NOT NULL, created REAL
);
CREATE TABLE IF NOT EXISTS events (
    run TEXT NOT NULL, step INTEGER NOT NULL, device INTEGER, kind TEXT, model TEXT, start REAL, end REAL,
    predicted_start REAL, predicted_end REAL, items INTEGER, tokens INTEGER, info TEXT
);
"""


_COLS = "key, model, question, role, slot, params, text, prompt_tokens, tokens, finish, COALESCE(seconds, 0.0)"


class Store:
    """Durable SQLite store of every generation, claims and run events (WAL; resumable)."""
    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            why = "a file is in the way" if isinstance(e, (FileExistsError, NotADirectoryError)) else e.strerror
            raise SymoeError(f"store {self.path}: cannot create its folder {self.path.parent}: {why}") from e
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
            for attempt in range(300):  # runs opening a new store at once: SQLite's busy timeout does not
                try:                    # cover switching it to WAL, so that is retried here (30 s at most)
                    self._setup()
                    break
                except sqlite3.OperationalError as e:
                    if "locked" not in str(e) or attempt == 299:
                        raise
                    time.sleep(0.1)
        except sqlite3.DatabaseError as e:
            raise SymoeError(f"store {self.path} is not a usable SQLite database: {e}") from e
        try:  # a read-only store opens and reads; found here, not at the first generation a model made
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(f"PRAGMA user_version = {int(version)}")
            finally:
                self._db.execute("ROLLBACK")
        except sqlite3.DatabaseError as e:
            self._db.close()
            raise SymoeError(f"store {self.path} is not writable: {e}") from e
        self._lock = threading.Lock()

    def _setup(self) -> None:
        if self._db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        cols = {r[1] for r in self._db.execute("PRAGMA table_info(generations)")}
        if "seconds" not in cols:  # a store written before generations kept their timing
            self._db.execute("ALTER TABLE generations ADD COLUMN seconds REAL")
        if "started" not in {r[1] for r in self._db.execute("PRAGMA table_info(claims)")}:  # claims by pid alone
            self._db.execute("ALTER TABLE claims ADD COLUMN started REAL")

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def put(self, g: Generation) -> bool:
        """Commit one generation; False if its key was already stored (never overwritten)."""
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO generations (key, model, question, role, slot, params, text, prompt_tokens, tokens, "
                "finish, created, seconds) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (g.key, g.model, g.question, g.role, g.slot, g.params, g.text, g.prompt_tokens, g.tokens, g.finish,
                 time.time(), g.seconds))
            return cur.rowcount == 1

    def get(self, key: str) -> Generation | None:
        """The stored generation of ``key``, or None."""
        with self._lock:
            row = self._db.execute(f"SELECT {_COLS} FROM generations WHERE key = ?", (key,)).fetchone()
        return Generation(*row) if row else None

    def existing(self, keys: Sequence[str]) -> set[str]:
        """Which of ``keys`` are stored."""
        found: set[str] = set()
        with self._lock:
            for i in range(0, len(keys), 500):
                chunk = list(keys[i:i + 500])
                q = f"SELECT key FROM generations WHERE key IN ({','.join('?' * len(chunk))})"
                found.update(r[0] for r in self._db.execute(q, chunk))
        return found

    def token_lengths(self) -> dict[tuple[str, str], tuple[int, float, float]]:
        """Per (model, role): stored generations with measured lengths, their mean prompt and output tokens."""
        with self._lock:
            rows = self._db.execute("SELECT model, role, COUNT(*), AVG(prompt_tokens), AVG(tokens) FROM generations "
                                    "WHERE tokens IS NOT NULL AND tokens >= 0 AND prompt_tokens IS NOT NULL "
                                    "GROUP BY model, role").fetchall()
        return {(m, r): (int(n), float(pin), float(out)) for m, r, n, pin, out in rows}

    def output_lengths(self) -> dict[tuple[str, str], dict[int, list[int]]]:
        """Per (model, role): every stored output length, by the max_tokens it was generated with."""
        with self._lock:
            rows = self._db.execute("SELECT model, role, params, tokens FROM generations "
                                    "WHERE tokens IS NOT NULL AND tokens >= 0").fetchall()
        out: dict[tuple[str, str], dict[int, list[int]]] = {}
        for model, role, params, tokens in rows:
            cap = int(json.loads(params).get("max_tokens", 0))
            out.setdefault((model, role), {}).setdefault(cap, []).append(int(tokens))
        return out

    def count(self, role: str | None = None) -> int:
        """Stored generations (of ``role`` if given)."""
        with self._lock:
            if role is None:
                return int(self._db.execute("SELECT COUNT(*) FROM generations").fetchone()[0])
            return int(self._db.execute("SELECT COUNT(*) FROM generations WHERE role = ?", (role,)).fetchone()[0])

    def all_keys(self) -> list[str]:
        """Every stored key, sorted."""
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT key FROM generations ORDER BY key")]

    def put_question(self, q: StoredQuestion) -> None:
        """Keep a question's text (once per id); a gold answer or category given later fills one not known."""
        with self._lock:
            self._db.execute(
                "INSERT INTO questions VALUES (?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET "
                "gold = CASE WHEN gold = '' THEN excluded.gold ELSE gold END, "
                "category = CASE WHEN category = '' THEN excluded.category ELSE category END",
                (q.id, q.text, q.kind, q.gold, q.category, time.time()))

    def questions(self) -> list[StoredQuestion]:
        """Every question kept with :meth:`put_question`, by id."""
        with self._lock:
            rows = self._db.execute("SELECT id, text, kind, gold, category FROM questions ORDER BY id").fetchall()
        return [StoredQuestion(*r) for r in rows]

    def log_event(self, run: str, step: int, device: int, kind: str, model: str | None, start: float, end: float,
                  predicted: tuple[float, float] | None, items: int = 0, tokens: int = 0,
                  info: dict[str, Any] | None = None) -> None:
        """Record one step of a run."""
        with self._lock:
            self._db.execute("INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                             (run, step, device, kind, model, start, end, predicted[0] if predicted else None,
                              predicted[1] if predicted else None, items, tokens, json.dumps(info or {})))

    def events(self, run: str) -> list[dict[str, Any]]:
        """The recorded steps of a run."""
        cols = ["run", "step", "device", "kind", "model", "start", "end", "predicted_start", "predicted_end", "items",
                "tokens", "info"]
        with self._lock:
            rows = self._db.execute("SELECT * FROM events WHERE run = ? ORDER BY start", (run,)).fetchall()
        return [dict(zip(cols, r)) for r in rows]

    def generations(self, keys: Iterable[str]) -> dict[str, Generation]:
        """Every stored generation."""
        keys = list(keys)
        out = {}
        with self._lock:
            for i in range(0, len(keys), 500):
                chunk = keys[i:i + 500]
                q = f"SELECT {_COLS} FROM generations WHERE key IN ({','.join('?' * len(chunk))})"
                out.update({r[0]: Generation(*r) for r in self._db.execute(q, chunk)})
        return out

    # Claims: a run claims what it is about to generate, so a second run on the same store waits
    # for those items instead of generating them again. Runs sharing a store share a machine (it is a
    # local SQLite file), so the claimant is its process: pid and start time together, since a pid
    # alone is reused by the system and would make a dead run's claims look held.

    def claim(self, keys: Sequence[str], owner: str) -> set[str]:
        """Claim ``keys`` for ``owner``; returns those a live other run holds (stale claims, whose
        process is gone or whose pid now names another process, are taken over)."""
        others: set[str] = set()
        me, started = os.getpid(), _started(os.getpid())
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for i in range(0, len(keys), 500):
                    chunk = list(keys[i:i + 500])
                    self._db.executemany("INSERT OR IGNORE INTO claims VALUES (?,?,?,?,?)",
                                         [(k, owner, me, time.time(), started) for k in chunk])
                    q = f"SELECT key, pid, started FROM claims WHERE owner != ? AND key IN ({','.join('?' * len(chunk))})"
                    for key, pid, since in self._db.execute(q, [owner, *chunk]).fetchall():
                        if _alive(pid, since):
                            others.add(key)
                        else:
                            self._db.execute("UPDATE claims SET owner = ?, pid = ?, created = ?, started = ? WHERE key = ?",
                                             (owner, me, time.time(), started, key))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return others

    def release(self, owner: str) -> None:
        """Drop every claim of ``owner`` (its work is stored, or it stopped)."""
        with self._lock:
            self._db.execute("DELETE FROM claims WHERE owner = ?", (owner,))


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first), None if unreadable."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()
    except OSError:
        return None


def _started(pid: int) -> float | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22): with the
    pid, it names one process for the life of the system. None where there is no /proc."""
    fields = _stat(pid)
    return float(fields[19]) if fields else None


def _alive(pid: int, started: float | None) -> bool:
    """Whether the claimant still runs: its pid names a live process started when the claim's
    was (a claim without a start time, from an older store or a system without /proc, is judged
    by its pid alone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    fields = _stat(pid)
    if fields is None:
        return True  # no /proc: the pid is all there is to go by
    return fields[0] != "Z" and (started is None or float(fields[19]) == started)  # Z: a zombie has exited
