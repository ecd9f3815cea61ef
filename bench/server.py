"""A benchmark's own Neo4j server (`scripts/neo4j-local` in a home folder of its own, on ports of
its own), so that no benchmark writes to a user's database and each measures a server whose
state it knows."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from toolkit.store import Connection

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "neo4j-local"


@dataclass(frozen=True)
class Server:
    """Where a benchmark's server lives: `home` under the repository, Bolt and HTTP ports."""

    home: str
    bolt: int
    http: int
    password: str

    def _run(self, command: str) -> None:
        env = {**os.environ, "NEO4J_LOCAL_HOME": str(ROOT / self.home),
               "NEO4J_LOCAL_BOLT_PORT": str(self.bolt), "NEO4J_LOCAL_HTTP_PORT": str(self.http),
               "NEO4J_PASSWORD": self.password}
        subprocess.run([str(SCRIPT), command], check=True, timeout=900, env=env)

    def start(self, fresh: bool = False) -> Connection:
        """Start it (with an empty database when `fresh`) and say how to reach it."""
        if fresh:
            self._run("stop")
            shutil.rmtree(ROOT / self.home, ignore_errors=True)
        self._run("start")
        return Connection(f"bolt://127.0.0.1:{self.bolt}", "neo4j", self.password, None)

    def stop(self) -> None:
        self._run("stop")

    def cpu_seconds(self) -> float:
        """CPU time the running server has spent (user + system, from /proc: Linux)."""
        pid = (ROOT / self.home / "run" / "neo4j.pid").read_text().strip()
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
