"""Where the store is and what can go wrong reaching it: `Connection` (URI, credentials never
printed) and the store's errors."""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit, urlunsplit

from toolkit.errors import ToolkitError


class StoreError(ToolkitError):
    """Neo4j is unreachable, refused us, or answered with an error."""


class ModelChangedError(StoreError):
    """The stored model is no longer the file this command read."""


class TransactionTooLargeError(StoreError):
    """A write does not fit the server's per-transaction memory (never retried)."""


MAX_MODEL_NAME = 1000
"""Model names are indexed (unique constraint); Neo4j's index keys hold about 4 kB."""
_SCHEMES = ("bolt", "bolt+s", "bolt+ssc", "neo4j", "neo4j+s", "neo4j+ssc")


@dataclass(frozen=True)
class Connection:
    uri: str
    user: str
    password: str
    database: str | None
    retry_seconds: float = 30.0  # how long a managed transaction retries transient failures

    def __post_init__(self) -> None:
        """Bolt schemes only; credentials written into the URI (`bolt://user:pw@host`) are
        taken out of it, so the URI can be printed, and used when no password is given."""
        parts = urlsplit(self.uri)
        if parts.scheme.lower() not in _SCHEMES:
            raise StoreError(
                f"a Neo4j URI with scheme {parts.scheme or '(none)'!r}: splitcut talks Bolt, so "
                "use bolt:// or neo4j:// (or their +s and +ssc TLS forms) at the Bolt port "
                "(7687 by default), not the Browser's HTTP port")
        if "@" in parts.netloc:
            userinfo, _, host = parts.netloc.rpartition("@")
            user, _, password = userinfo.partition(":")
            object.__setattr__(self, "uri", urlunsplit(parts._replace(netloc=host)))
            if not self.password:
                object.__setattr__(self, "user", unquote(user) or self.user)
                object.__setattr__(self, "password", unquote(password))

    @classmethod
    def from_env(
        cls, uri: str | None = None, user: str | None = None, password: str | None = None,
        database: str | None = None,
    ) -> Connection:
        """Explicit values, else NEO4J_URI / NEO4J_USER / NEO4J_PASSWORD / NEO4J_DATABASE."""
        return cls(
            uri or os.environ.get("NEO4J_URI", "bolt://127.0.0.1:7687"),
            user or os.environ.get("NEO4J_USER", "neo4j"),
            password if password is not None else os.environ.get("NEO4J_PASSWORD", ""),
            database or os.environ.get("NEO4J_DATABASE") or None,
        )

    def __repr__(self) -> str:  # never show the password
        return f"Connection(uri={self.uri!r}, user={self.user!r}, database={self.database!r})"
