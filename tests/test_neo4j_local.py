"""The local Neo4j server that scripts/neo4j-local starts (the suite starts its own: conftest)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from neo4j import GraphDatabase

URI = os.environ.get("NEO4J_URI", "bolt://127.0.0.1:7687")
AUTH = (os.environ.get("NEO4J_USER", "neo4j"), os.environ.get("NEO4J_PASSWORD", "splitcut-dev"))


def test_bolt_answers_a_parameterised_query_as_neo4j_5_26_community():
    with GraphDatabase.driver(URI, auth=AUTH) as driver:
        records, _, _ = driver.execute_query("RETURN $x + 1 AS y", x=41)
        assert records[0]["y"] == 42
        records, _, _ = driver.execute_query(
            "CALL dbms.components() YIELD versions, edition RETURN versions[0] AS v, edition"
        )
    assert records[0]["v"].startswith("5.26")
    assert records[0]["edition"] == "community"


def test_browser_is_served_at_browser():
    port = os.environ.get("NEO4J_LOCAL_HTTP_PORT", "7474")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/browser/", timeout=10) as response:
        assert response.status == 200
        assert b"Neo4j Browser" in response.read()


def test_the_suite_runs_on_its_own_server_not_the_users():
    """conftest started a server of its own (home, ports, password): the default server a
    user runs (bolt 7687, .neo4j/) is never the one the tests write to."""
    from tests.conftest import ROOT, SUITE_SERVER

    assert URI == f"bolt://127.0.0.1:{os.environ['NEO4J_LOCAL_BOLT_PORT']}" != \
        "bolt://127.0.0.1:7687"
    pid = (Path(SUITE_SERVER["NEO4J_LOCAL_HOME"]) / "run" / "neo4j.pid").read_text().strip()
    assert Path(f"/proc/{pid}").exists()  # the server answering is the suite's
    with GraphDatabase.driver(URI, auth=AUTH) as driver:
        records, _, _ = driver.execute_query(
            "SHOW SETTINGS YIELD name, value WHERE name = 'server.directories.data' "
            "RETURN value", database_="system")
    assert records[0]["value"].startswith(str(ROOT / ".neo4j-tests"))


def test_a_port_another_server_holds_is_refused_not_taken_for_its_own(tmp_path):
    """Two suites on one machine (CI beside a developer's run): the second start's server could
    not bind the port, and the first's, answering there, passed for it. Now the start stops,
    in one line, before starting anything."""
    from tests.conftest import SCRIPT

    home = tmp_path / "home"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        env = {**os.environ, "NEO4J_LOCAL_HOME": str(home), "NEO4J_LOCAL_BOLT_PORT": port,
               "NEO4J_LOCAL_HTTP_PORT": port}
        done = subprocess.run([str(SCRIPT), "start"], env=env, capture_output=True, text=True,
                              timeout=120)
    assert done.returncode == 1
    assert f"port {port} is taken by another server" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (home / "run" / "neo4j.pid").exists()  # nothing was started


def _forward(listener: socket.socket, port: int, opened: list[socket.socket]) -> None:
    """Relay each connection to `listener` to 127.0.0.1:`port`, both ways, until the test
    closes `listener` and the sockets in `opened`."""

    def pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):  # (either side closed)
            while data := source.recv(65536):
                sink.sendall(data)

    with contextlib.suppress(OSError):  # (the listener was closed: the test is over)
        while True:
            client, _ = listener.accept()
            server = socket.create_connection(("127.0.0.1", port))
            opened += [client, server]
            threading.Thread(target=pump, args=(client, server), daemon=True).start()
            threading.Thread(target=pump, args=(server, client), daemon=True).start()


def test_a_port_taken_while_the_server_starts_is_not_taken_for_it(tmp_path):
    """Two suites starting at once both find a port free; the second's server then cannot bind
    it, and the first's server answering there (same password) passed for the second's. Here
    the port is taken once the new server is on its way, by a relay to the suite's own server,
    which answers Bolt as the new one would: the start must not call that its server."""
    from tests.conftest import SCRIPT, free_ports

    home = tmp_path / "home"
    bolt, http = free_ports(2)
    env = {**os.environ, "NEO4J_LOCAL_HOME": str(home), "NEO4J_LOCAL_BOLT_PORT": bolt,
           "NEO4J_LOCAL_HTTP_PORT": http, "NEO4J_LOCAL_WAIT": "90", "NEO4J_LOCAL_HEAP": "512m"}
    start = subprocess.Popen([str(SCRIPT), "start"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    relay = socket.socket()
    opened: list[socket.socket] = []
    try:
        while not (home / "run" / "neo4j.pid").exists():  # java is on its way: take the port
            assert start.poll() is None, start.communicate()
            time.sleep(0.01)
        relay.bind(("127.0.0.1", int(bolt)))
        relay.listen()
        suite_bolt = int(os.environ["NEO4J_LOCAL_BOLT_PORT"])
        threading.Thread(target=_forward, args=(relay, suite_bolt, opened), daemon=True).start()
        with GraphDatabase.driver(f"bolt://127.0.0.1:{bolt}", auth=AUTH) as driver:
            driver.verify_connectivity()  # (the relay answers Bolt as a server of its own would)
        out, err = start.communicate(timeout=150)
    finally:
        for held in [relay, *opened]:
            held.close()
        start.kill()
        subprocess.run([str(SCRIPT), "stop"], env=env, capture_output=True, timeout=120)
    assert start.returncode == 1, out
    assert "running" not in out
    assert f"port {bolt} was taken by another program while the server started" in err
    assert len(err.strip().splitlines()) == 1


def test_the_suite_starts_its_server_again_on_free_ports_when_its_port_was_taken(
        tmp_path, monkeypatch):
    """The other half of two suites starting at once: the one whose server lost its port
    starts it again on two free ports, and points the tests there; ports the environment
    fixed are never moved."""
    from tests import conftest

    calls = tmp_path / "calls"
    fake = tmp_path / "neo4j-local"  # fails once as the script does when a port was taken
    fake.write_text(f"""#!/usr/bin/env bash
echo "$NEO4J_LOCAL_BOLT_PORT $NEO4J_LOCAL_HTTP_PORT" >> {calls}
if [ "$(wc -l < {calls})" -eq 1 ]; then
  echo "neo4j-local: port $NEO4J_LOCAL_BOLT_PORT was taken by another program while the \\
server started, and the server exited" >&2
  exit 1
fi
echo "neo4j-local: running"
""")
    fake.chmod(0o755)
    for key in ("NEO4J_LOCAL_BOLT_PORT", "NEO4J_LOCAL_HTTP_PORT", "NEO4J_URI"):
        monkeypatch.setenv(key, os.environ[key])  # (restored after: the suite's server stays)
    for key in ("NEO4J_LOCAL_BOLT_PORT", "NEO4J_LOCAL_HTTP_PORT"):
        monkeypatch.setitem(conftest.SUITE_SERVER, key, conftest.SUITE_SERVER[key])
    monkeypatch.delenv("SPLITCUT_TEST_BOLT_PORT", raising=False)
    monkeypatch.delenv("SPLITCUT_TEST_HTTP_PORT", raising=False)
    conftest.use_ports("7697", "7484")
    conftest.start_suite_server(fake)
    first, second = (line.split() for line in calls.read_text().splitlines())
    assert first == ["7697", "7484"] and second != first and len(set(second)) == 2
    assert os.environ["NEO4J_URI"] == f"bolt://127.0.0.1:{second[0]}"
    assert conftest.SUITE_SERVER["NEO4J_LOCAL_HTTP_PORT"] == second[1]
    calls.unlink()
    monkeypatch.setenv("SPLITCUT_TEST_BOLT_PORT", "7697")  # fixed ports: the failure stands
    with pytest.raises(subprocess.CalledProcessError):
        conftest.start_suite_server(fake)
    assert len(calls.read_text().splitlines()) == 1


def test_a_second_suite_takes_free_ports_when_the_default_ones_are_held(monkeypatch):
    """Two suites at once in two checkouts: the second finds 7697 held (by the first suite's
    server, or here by a socket) and takes two free ports instead; ports it is told are kept."""
    from tests.conftest import port_free, suite_ports

    monkeypatch.delenv("SPLITCUT_TEST_BOLT_PORT", raising=False)
    monkeypatch.delenv("SPLITCUT_TEST_HTTP_PORT", raising=False)
    with socket.socket() as held:
        if port_free(7697):  # (the suite's own server holds it when it runs on the defaults)
            held.bind(("127.0.0.1", 7697))
            held.listen()
        bolt, http = suite_ports()
        assert {bolt, http}.isdisjoint({"7697", "7484"}) and bolt != http
        assert port_free(int(bolt)) and port_free(int(http))
    monkeypatch.setenv("SPLITCUT_TEST_BOLT_PORT", "7799")
    assert suite_ports() == ("7799", "7484")


def test_a_second_run_of_this_checkouts_suite_gets_a_home_of_its_own():
    """One file's tests run beside the whole suite, in one checkout: the second run stopped
    the first's server as one an interrupted run had left, and the first's tests failed. Now
    a run holds its home while it lasts: a second gets one of its own, and a home a killed
    run left behind is removed."""
    from tests.conftest import HOME, ROOT, SUITE_SERVER, suite_home

    ours = Path(SUITE_SERVER["NEO4J_LOCAL_HOME"])
    left = ROOT / f"{HOME.name}-left"  # as a killed run leaves its own home
    (left / "data").mkdir(parents=True)
    home, handle = suite_home()
    try:
        assert not left.exists()
        assert home != ours and home.name.startswith(f"{HOME.name}-")
        assert (ours / "run" / "neo4j.pid").exists()  # this run's server was not stopped
    finally:
        handle.close()
        shutil.rmtree(home)


def test_a_port_the_last_run_left_in_time_wait_is_free_and_a_listened_one_is_not():
    """After a run, the server's side of its closed connections waits (TIME_WAIT) on its
    port; the server binds there again (SO_REUSEADDR), so the next run should not move to
    other ports for it, as it did. A port something listens on stays taken."""
    from tests.conftest import port_free

    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert not port_free(port)
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = listener.accept()
        accepted.close()  # the server's side closes first: it waits in TIME_WAIT
        client.close()
    with socket.socket() as plain, pytest.raises(OSError):  # refused without SO_REUSEADDR
        plain.bind(("127.0.0.1", port))
    assert port_free(port)
