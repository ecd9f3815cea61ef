"""Process entry points for the concurrency tests (importable by spawned processes)."""

from __future__ import annotations

import os
from typing import Any

from toolkit import api
from toolkit.store import Connection, Store

PASSWORD = os.environ.get("NEO4J_PASSWORD", "splitcut-dev")


def ingest_all(barrier: Any, jobs: list[tuple[str, str]], results: Any) -> None:
    """Wait for the others, then ingest each (path, name); report statuses or the error."""
    try:
        with Store(Connection.from_env(password=PASSWORD)) as store:
            barrier.wait(timeout=120)
            for path, name in jobs:
                _, _, status = api.ingest_model(store, path, api.make_scenario(), name)
                results.put((name, status))
    except Exception as exc:  # reported to the test, which fails on it
        results.put(("error", f"{type(exc).__name__}: {exc}"))


def partition_rounds(barrier: Any, path: str, name: str, uplinks: list[str],
                     results: Any) -> None:
    """Wait for the others, then partition `name` once per uplink rate, writing each back."""
    try:
        with Store(Connection.from_env(password=PASSWORD)) as store:
            barrier.wait(timeout=120)
            for uplink in uplinks:
                scenario = api.make_scenario(uplink=uplink, downlink=uplink)
                _, written, _ = api.partition_in_neo4j(store, path, scenario, name)
                results.put((uplink, written["device"]))
    except Exception as exc:
        results.put(("error", f"{type(exc).__name__}: {exc}"))
