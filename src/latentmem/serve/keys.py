"""API keys bound to tenants, kept as hashes in SQLite beside the memory store.

A key reads `lmk_<id>_<secret>`: the id finds the row, the secret is checked against its SHA-256. The
secret is 32 random bytes, so a plain hash is enough (a slow password hash protects guessable secrets;
nothing guesses 256 random bits). The full key is shown once, by `create`, and never stored.

A key is bound to a `user` (and optionally an `agent`): everything it does happens in that scope. An admin
key is bound to no tenant; it manages keys and may read and write any scope.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
import secrets
import sqlite3
import threading
import time
from pathlib import Path

from latentmem.errors import LatentMemError

KEYS_FILE = "keys.sqlite"
_KEY = re.compile(r"^lmk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY, secret_sha256 TEXT NOT NULL, user TEXT, agent TEXT, admin INTEGER NOT NULL,
    created_at REAL NOT NULL, revoked_at REAL
);
"""


class KeyStoreError(LatentMemError):
    """A key cannot be created or revoked as asked (unknown id, a tenant key without a user...)."""


@dataclasses.dataclass(frozen=True)
class ApiKey:
    """What the server knows of a key: never its secret."""

    id: str
    user: str | None
    agent: str | None
    admin: bool
    created_at: float
    revoked_at: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyStore:
    """The keys of one server in `path` (an SQLite file; WAL, so `latentmem serve keys` may change them
    while the server runs: a revoked key stops working at its next request). Safe across threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.executescript(_SCHEMA)
        except (OSError, sqlite3.DatabaseError) as exc:
            raise KeyStoreError(f"cannot open the key store {self.path}: {exc}") from exc

    def create(
        self, *, user: str | None = None, agent: str | None = None, admin: bool = False
    ) -> tuple[str, ApiKey]:
        """A new key: (the full key, to show once; its record)."""
        if not admin and not user:
            raise KeyStoreError(
                "a tenant key needs --user (the user it is bound to); or create an --admin key"
            )
        for name, value in (("user", user), ("agent", agent)):
            if value is not None and not value.strip():
                raise KeyStoreError(f"--{name} must not be empty")
        key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        record = ApiKey(key_id, user, agent, admin, time.time())
        with self._lock:
            self._conn.execute(
                "INSERT INTO api_keys (id, secret_sha256, user, agent, admin, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (key_id, _digest(secret), user, agent, int(admin), record.created_at),
            )
        return f"lmk_{key_id}_{secret}", record

    def list(self) -> list[ApiKey]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, user, agent, admin, created_at, revoked_at FROM api_keys ORDER BY created_at"
            ).fetchall()
        return [ApiKey(i, u, a, bool(adm), c, r) for i, u, a, adm, c, r in rows]

    def revoke(self, key_id: str) -> ApiKey:
        """Revoke a key by id (a revoked key stays listed, marked revoked)."""
        with self._lock:
            cur = self._conn.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (time.time(), key_id),
            )
        if cur.rowcount == 0:
            raise KeyStoreError(f"no active key with id {key_id!r}; `latentmem serve keys list` shows them")
        return next(k for k in self.list() if k.id == key_id)

    def has_active(self) -> bool:
        with self._lock:
            return (
                self._conn.execute("SELECT 1 FROM api_keys WHERE revoked_at IS NULL").fetchone() is not None
            )

    def verify(self, key: str) -> ApiKey | None:
        """The active key `key` is, or None (malformed, unknown, wrong secret or revoked alike)."""
        match = _KEY.match(key)
        if match is None:
            return None
        key_id, secret = match.groups()
        with self._lock:
            row = self._conn.execute(
                "SELECT secret_sha256, user, agent, admin, created_at FROM api_keys "
                "WHERE id = ? AND revoked_at IS NULL",
                (key_id,),
            ).fetchone()
        if row is None or not hmac.compare_digest(row[0], _digest(secret)):
            return None
        return ApiKey(key_id, row[1], row[2], bool(row[3]), row[4])

    def close(self) -> None:
        self._conn.close()
