from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from toolkit import zoo

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "neo4j-local"
# The suite's own Neo4j server: its own home folder, ports and password, started here and
# stopped after the run, so that no test ever writes to a user's database.
SUITE_SERVER = {
    "NEO4J_LOCAL_HOME": str(ROOT / ".neo4j-tests"),
    "NEO4J_LOCAL_BOLT_PORT": os.environ.get("SPLITCUT_TEST_BOLT_PORT", "7697"),
    "NEO4J_LOCAL_HTTP_PORT": os.environ.get("SPLITCUT_TEST_HTTP_PORT", "7484"),
    "NEO4J_PASSWORD": "splitcut-test",
}
_USER: dict[str, Any] = {}  # the user's server as the environment names it, and its models


def _user_models(uri: str, password: str) -> list[str] | None:
    """The models in the user's database (None when no server answers there)."""
    from neo4j import GraphDatabase
    from neo4j.exceptions import AuthError, ServiceUnavailable

    try:
        with GraphDatabase.driver(uri, auth=(os.environ.get("NEO4J_USER", "neo4j"),
                                             password), connection_timeout=3,
                                  max_transaction_retry_time=0) as driver:  # none there: say so
            records, _, _ = driver.execute_query(
                "MATCH (m:Model) RETURN m.name AS name, m.version AS version ORDER BY name")
            return [f"{r['name']}@{r['version']}" for r in records]
    except (AuthError, ServiceUnavailable, OSError, ValueError):
        return None


def pytest_configure(config: pytest.Config) -> None:
    """Start the suite's server and point every test at it; note the user's models first."""
    if hasattr(config, "workerinput"):
        return
    _USER["uri"] = os.environ.get("NEO4J_URI", "bolt://127.0.0.1:7687")
    _USER["password"] = os.environ.get("NEO4J_PASSWORD", "splitcut-dev")
    _USER["models"] = _user_models(_USER["uri"], _USER["password"])
    os.environ.update(SUITE_SERVER)
    os.environ["NEO4J_URI"] = f"bolt://127.0.0.1:{SUITE_SERVER['NEO4J_LOCAL_BOLT_PORT']}"
    os.environ.pop("NEO4J_DATABASE", None)
    subprocess.run([str(SCRIPT), "start"], check=True, timeout=900)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop the suite's server, and fail the run if the user's database changed."""
    if "uri" not in _USER:
        return
    subprocess.run([str(SCRIPT), "stop"], check=False, timeout=300)
    after = _user_models(_USER["uri"], _USER["password"])
    if _USER["models"] is not None and after != _USER["models"]:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        print(f"\nthe user's database at {_USER['uri']} changed during the tests: "
              f"{_USER['models']} -> {after}")


@pytest.fixture(scope="session")
def zoo_path():
    """Export (once, cached) a zoo model and return its ONNX path."""

    def get(name: str, exporter: str = "torchscript") -> Path:
        return zoo.export(name, exporter=exporter)

    return get


settings.register_profile("default", deadline=None)
settings.load_profile("default")
