from __future__ import annotations

import fcntl
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO, Any

import pytest
from hypothesis import settings

from toolkit import zoo

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "neo4j-local"
HOME = ROOT / ".neo4j-tests"
# The suite's own Neo4j server: its own home folder, ports and password, started here and
# stopped after the run, so that no test ever writes to a user's database. Its home and ports
# are set in pytest_configure (`suite_home`, `suite_ports`).
SUITE_SERVER = {
    "NEO4J_LOCAL_HOME": str(HOME),
    "NEO4J_LOCAL_BOLT_PORT": "7697",
    "NEO4J_LOCAL_HTTP_PORT": "7484",
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


def port_free(port: int) -> bool:
    """Nothing on this machine listens on `port` (a bind to it succeeds; connections the last
    run left in TIME_WAIT there do not count, as they do not for the server, which binds with
    SO_REUSEADDR)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[str]:
    """`count` distinct ports that nothing listens on, below the kernel's ephemeral range (so
    that no outgoing connection is handed one before a server binds it)."""
    chosen: list[str] = []
    while len(chosen) < count:
        port = random.randrange(20000, 32000)
        if str(port) not in chosen and port_free(port):
            chosen.append(str(port))
    return chosen


def claim(home: Path) -> IO[str] | None:
    """Hold `home` for this run: a lock on a file in it, which the kernel lets go when the
    process ends, however it ends. None where another live run holds it."""
    home.mkdir(parents=True, exist_ok=True)
    handle = (home / "suite.lock").open("a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def suite_home() -> tuple[Path, IO[str]]:
    """The suite server's home, held for the run: .neo4j-tests, or where another run of this
    checkout's suite holds that one (a file's tests run beside the whole suite), a home of
    this run's own, .neo4j-tests-XXXX, removed after. Own homes that killed runs left are
    removed first (their servers stopped)."""
    for left in sorted(ROOT.glob(f"{HOME.name}-*")):
        handle = claim(left)
        if handle is not None:
            subprocess.run([str(SCRIPT), "stop"], check=False, capture_output=True, timeout=300,
                           env={**os.environ, "NEO4J_LOCAL_HOME": str(left)})
            shutil.rmtree(left, ignore_errors=True)
            handle.close()
    handle = claim(HOME)
    if handle is not None:
        return HOME, handle
    own = Path(tempfile.mkdtemp(prefix=f"{HOME.name}-", dir=ROOT))
    handle = claim(own)
    assert handle is not None  # (made just now: no other run holds it)
    print(f"another run of this checkout's suite holds {HOME.name}/: this one's server lives "
          f"in {own.name}/")
    return own, handle


def suite_ports() -> tuple[str, str]:
    """The suite server's Bolt and HTTP ports: SPLITCUT_TEST_BOLT_PORT/_HTTP_PORT where set,
    else 7697 and 7484 where both are free, else two free ports (another suite, in another
    checkout, holds those)."""
    bolt, http = (os.environ.get(f"SPLITCUT_TEST_{kind}_PORT") for kind in ("BOLT", "HTTP"))
    if bolt or http:
        return bolt or "7697", http or "7484"
    if port_free(7697) and port_free(7484):
        return "7697", "7484"
    bolt, http = free_ports(2)
    print(f"the suite's Neo4j server takes ports {bolt} and {http}: 7697 or 7484 is taken")
    return bolt, http


def pytest_configure(config: pytest.Config) -> None:
    """Start the suite's server and point every test at it; note the user's models first."""
    if hasattr(config, "workerinput"):
        return
    _USER["uri"] = os.environ.get("NEO4J_URI", "bolt://127.0.0.1:7687")
    _USER["password"] = os.environ.get("NEO4J_PASSWORD", "splitcut-dev")
    _USER["models"] = _user_models(_USER["uri"], _USER["password"])
    home, _USER["home_lock"] = suite_home()
    SUITE_SERVER["NEO4J_LOCAL_HOME"] = str(home)
    # a server that an interrupted run left running in this home is stopped, so that the
    # ports chosen are the ones it listens on
    subprocess.run([str(SCRIPT), "stop"], env={**os.environ, **SUITE_SERVER}, check=False,
                   capture_output=True, timeout=300)
    use_ports(*suite_ports())
    os.environ.pop("NEO4J_DATABASE", None)
    start_suite_server(SCRIPT)


def use_ports(bolt: str, http: str) -> None:
    """Point the suite's server, and every test through the environment, at these ports."""
    SUITE_SERVER["NEO4J_LOCAL_BOLT_PORT"], SUITE_SERVER["NEO4J_LOCAL_HTTP_PORT"] = bolt, http
    os.environ.update(SUITE_SERVER)
    os.environ["NEO4J_URI"] = f"bolt://127.0.0.1:{bolt}"


def start_suite_server(script: Path, attempts: int = 3) -> None:
    """Start the suite's server. Where another program takes one of its ports while it starts
    (a second suite that found the same ports free at the same moment), start it again on two
    free ones, unless the environment fixed them (SPLITCUT_TEST_BOLT_PORT/_HTTP_PORT)."""
    fixed = any(os.environ.get(f"SPLITCUT_TEST_{kind}_PORT") for kind in ("BOLT", "HTTP"))
    for attempt in range(1, attempts + 1):
        with subprocess.Popen([str(script), "start"], stderr=subprocess.PIPE, text=True) as run:
            assert run.stderr is not None
            said = []
            for line in run.stderr:  # (shown as it comes: the first start fetches the server)
                print(line, end="", file=sys.stderr)
                said.append(line)
            code = run.wait(timeout=900)
        if code == 0:
            return
        if fixed or attempt == attempts or "taken by another" not in "".join(said):
            raise subprocess.CalledProcessError(code, run.args, stderr="".join(said))
        use_ports(*free_ports(2))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop the suite's server, and fail the run if the user's database changed."""
    if "uri" not in _USER:
        return
    subprocess.run([str(SCRIPT), "stop"], check=False, timeout=300)
    if Path(SUITE_SERVER["NEO4J_LOCAL_HOME"]) != HOME:
        shutil.rmtree(SUITE_SERVER["NEO4J_LOCAL_HOME"], ignore_errors=True)
    _USER["home_lock"].close()
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
