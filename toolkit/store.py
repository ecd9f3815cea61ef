"""The Neo4j store: the only module that imports `neo4j`.

Every query comes from `cypher/` by name and takes parameters; nothing a user types is spliced
into a query string, and labels come from a fixed set (:Device, :Server). A model is written by
one statement in one managed transaction (there whole or not at all; the driver retries
transient errors), and re-ingesting the same file changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import neo4j
import numpy as np
from neo4j import GraphDatabase, ManagedTransaction
from neo4j.exceptions import (
    AuthError,
    DriverError,
    Neo4jError,
    ServiceUnavailable,
    SessionExpired,
)

from toolkit import queries
from toolkit.blocks import BlockStructure, BlockType, Segment, layer_key, signature, tensor_key
from toolkit.costgraph import CostGraph, CostTensor
from toolkit.costs import scenario_key
from toolkit.errors import ToolkitError
from toolkit.graph import LayerGraph
from toolkit.partition import Partition
from toolkit.partition.blockwise import Chain, Inner, solve_segment

Rows = Callable[..., list[dict[str, Any]]]
"""Runs a saved query by name with keyword parameters and returns its rows."""

log = logging.getLogger(__name__)



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


class Store:
    """A connection to one Neo4j database, used as a context manager."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        with self._errors():
            self.driver = GraphDatabase.driver(
                connection.uri, auth=(connection.user, connection.password),
                notifications_min_severity="OFF",
                max_transaction_retry_time=connection.retry_seconds,
            )
            self.driver.verify_connectivity()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.driver.close()

    @contextmanager
    def _errors(self, writing: bool = False) -> Iterator[None]:
        """Driver exceptions -> one-line StoreErrors that name the URI, never the password."""
        uri, user = self.connection.uri, self.connection.user
        try:
            yield
        except AuthError as exc:
            raise StoreError(
                f"Neo4j at {uri} rejected the credentials of user {user!r} (check NEO4J_PASSWORD)"
            ) from exc
        except (ServiceUnavailable, SessionExpired) as exc:
            if writing:
                raise StoreError(
                    f"lost Neo4j at {uri} while writing and could not get it back within "
                    f"{self.connection.retry_seconds:g} s of retries; the transaction was "
                    "rolled back, so nothing was changed"
                ) from exc
            if uri.split("://")[0].endswith(("+s", "+ssc")):
                raise StoreError(
                    f"cannot reach Neo4j at {uri}: is it running, and does it accept TLS? "
                    "(the +s/+ssc scheme asks for TLS; bolt:// and neo4j:// connect without)"
                ) from exc
            raise StoreError(
                f"cannot reach Neo4j at {uri}: is it running? (scripts/neo4j-local start)"
            ) from exc
        except Neo4jError as exc:
            message = (exc.message or "").strip().splitlines()
            raise StoreError(
                f"Neo4j at {uri} answered {exc.code}: {message[0] if message else ''}"
            ) from exc
        except (DriverError, OSError, ValueError) as exc:
            raise StoreError(f"Neo4j at {uri}: {type(exc).__name__}: {exc}") from exc

    def _session(self) -> neo4j.Session:
        return self.driver.session(database=self.connection.database)

    def _write(self, work: Callable[[ManagedTransaction], Any]) -> Any:
        """`work` in one managed write transaction: transient failures (a lost connection, a
        deadlock, a leader switch) are retried with backoff by the driver, the whole of `work`
        each time."""
        def once(tx: ManagedTransaction) -> Any:
            try:
                return work(tx)
            except Neo4jError as exc:  # retrying cannot make a transaction fit
                if "OutOfMemory" in (exc.code or ""):
                    raise TransactionTooLargeError(
                        f"the write needs more memory than Neo4j at {self.connection.uri} "
                        "allows one transaction (db.memory.transaction.max); it was rolled "
                        "back, so nothing was changed: raise that limit and the heap "
                        "(NEO4J_LOCAL_TX_MAX, NEO4J_LOCAL_HEAP for scripts/neo4j-local)"
                    ) from exc
                raise

        with self._errors(writing=True), self._session() as session:
            return session.execute_write(once)

    def _read(self, query: str, /, **params: Any) -> list[dict[str, Any]]:
        """A saved query in a read transaction (`query` is positional-only, so a parameter may
        be called `query` or `self`)."""
        text = queries.load(query)

        def work(tx: ManagedTransaction) -> list[dict[str, Any]]:
            return [record.data() for record in tx.run(text, params)]

        with self._errors(), self._session() as session:
            return list(session.execute_read(work))

    def ensure_schema(self) -> None:
        for statement in queries.statements("schema"):
            with self._errors(), self._session() as session:
                session.run(statement).consume()

    # ingest ---------------------------------------------------------------------------------

    def ingest(
        self, graph: LayerGraph, costs: CostGraph, sha256: str, source: str, opset: int,
        names: dict[str, str] | None = None,
    ) -> str:
        """Write a model whole, with its blocks detected, in one transaction: 'created',
        'replaced' or 'unchanged' (same sha256: nothing written).

        The transaction first takes the model's lock (`model_lock`), so concurrent ingests of
        one model run one after the other and the later one finds it unchanged.
        """
        if len(graph.name) > MAX_MODEL_NAME:
            raise StoreError(f"a model name of {len(graph.name)} characters cannot be stored "
                             f"(at most {MAX_MODEL_NAME}); give a shorter one with --name")
        model = {"name": graph.name, "sha256": sha256, "source": source, "opset": opset,
                 "layer_count": len(graph), "scenario": json.dumps(costs.scenario, sort_keys=True),
                 "device": costs.scenario.get("device"), "server": costs.scenario.get("server")}

        def work(tx: ManagedTransaction) -> str:
            old = tx.run(queries.load("model_lock"), name=graph.name).single(strict=True)[0]
            if old == sha256:
                return "unchanged"
            layers, feeds = ingest_rows(graph, costs)
            tx.run(queries.load("model_clear"), name=graph.name).consume()
            tx.run(queries.load("model_create"), model).consume()
            tx.run(queries.load("ingest_layers"), model=graph.name, rows=layers,
                   feeds=feeds).consume()
            _detect_blocks(tx, graph.name, names or {})
            return "created" if old is None else "replaced"

        status: str = self._write(work)
        return status

    def set_costs(self, costs: CostGraph) -> None:
        """Put another scenario's delays on a stored model."""
        self._write(lambda tx: _set_costs(tx, costs))

    # block detection --------------------------------------------------------------------------

    def detect_blocks(self, model: str, names: dict[str, str] | None = None) -> BlockStructure:
        """Detect a stored model's blocks again (ingest already does it) and read them back."""
        self._write(lambda tx: _detect_blocks(tx, model, names or {}))
        return self.read_blocks(model)

    def read_blocks(self, model: str) -> BlockStructure:
        rows = self._read("read_blocks", model=model)
        if not rows:
            raise StoreError(f"model {model!r} has no blocks in Neo4j: ingest it first")
        type_of: dict[str, int] = {}
        segments = []
        for row in rows:
            tid = type_of.setdefault(row["signature"], len(type_of))
            entry = None if row["entry"] < 0 else int(row["entry"])
            closed = bool(row["closed"])
            segments.append(Segment(int(row["index"]), tuple(range(int(row["entry"]) + 1,
                                                                    int(row["exit"]) + 1)),
                                    entry, int(row["exit"]) if closed else None, tid))
        first = {s.type_id: s for s in reversed(segments)}
        named = {r["signature"]: r["name"] for r in rows}
        types = [
            BlockType(t, sig, named[sig], len(first[t].layers),
                      sum(1 for s in segments if s.type_id == t), first[t].exit is not None)
            for sig, t in type_of.items()
        ]
        last = max(s.layers[-1] for s in segments) + 1
        cuts = [s.exit for s in segments if s.exit is not None]
        return BlockStructure(model, last, cuts, segments, types)

    # the cost graph and the cut ---------------------------------------------------------------

    def read_cost_graph(self, model: str, rows: Rows | None = None) -> CostGraph:
        """The stored cost graph (through `rows` inside a transaction, else on its own)."""
        read = rows or self._read
        layers = read("read_layers", model=model)
        if not layers:
            raise StoreError(f"model {model!r} is not in Neo4j: ingest it first")
        tensors = [
            CostTensor(r["tensor"], int(r["producer"]), tuple(int(c) for c in r["consumers"]),
                       float(r["bytes"]), float(r["crossing_ms"]))
            for r in read("read_tensors", model=model)
        ]
        stored = read("model_get", name=model)
        message = stored[0] if stored else {}
        return CostGraph(
            model=model, names=[r["name"] for r in layers], ops=[r["op"] for r in layers],
            device_ms=[float(r["device_ms"]) for r in layers],
            server_ms=[float(r["server_ms"]) for r in layers],
            pinned=[bool(r["pinned"]) for r in layers], tensors=tensors,
            scenario=json.loads(stored[0]["scenario"]) if stored else {},
            flops=[float(r["flops"]) for r in layers], macs=[float(r["macs"]) for r in layers],
            params=[int(r["params"]) for r in layers],
            latency_ms=float(message.get("latency_ms") or 0.0),
            labels_ms=float(message.get("labels_ms") or 0.0),
            outputs=[i for i, r in enumerate(layers) if r["output"]],
        )

    def read_chain(self, model: str, rows: Rows | None = None) -> Chain:
        """The compressed chain with the stored delays summed per block, computed in Cypher.

        Blocks share an inner solution only when their inner problems are identical: the same
        type and the same per-layer delays, pins and output flags and per-tensor crossing costs
        (tensors matched by producer position, output slot and consumer position)."""
        found = (rows or self._read)("read_chain", model=model)
        if not found:
            raise StoreError(f"model {model!r} has no blocks in Neo4j: ingest it first")
        pinned = [int(r["last_pinned"]) for r in found if r["last_pinned"] is not None]
        chain = Chain(
            layer_count=int(found[-1]["exit"]) + 1,
            entries=np.array([r["entry"] for r in found], dtype=np.int64),
            exits=np.array([r["exit"] for r in found], dtype=np.int64),
            closed=np.array([r["closed"] for r in found], dtype=bool),
            device=np.array([r["device"] for r in found], dtype=np.float64),
            server=np.array([r["server"] for r in found], dtype=np.float64),
            cheapest=np.array([r["cheapest"] for r in found], dtype=np.float64),
            exit_cross=np.array([r["exit_cross"] if r["closed"] else 0.0 for r in found]),
            groups=np.zeros(len(found), dtype=np.int64),
            last_pinned=max(pinned, default=-1),
            outputs=tuple(sorted(int(o) for r in found for o in r["outputs"])),
            labels_ms=float(found[0]["labels_ms"] or 0.0),
        )
        labels_inside = chain.labels_inside()
        group_of: dict[tuple[object, ...], int] = {}
        for k, r in enumerate(found):
            key = (r["signature"], bool(labels_inside[k]),
                   tuple(sorted(tuple(x) for x in r["inner_layers"])),
                   tuple(sorted(tuple(x) for x in r["inner_tensors"])))
            chain.groups[k] = group_of.setdefault(key, len(group_of))
        return chain

    def solve_segment(self, model: str, chain: Chain, k: int, labels: bool,
                      rows: Rows | None = None) -> Inner:
        """Read segment k's inside (and nothing else) and solve its inner min cut."""
        entry, last = int(chain.entries[k]), int(chain.exits[k])
        first = max(entry, 0)
        found = (rows or self._read)("read_segment", model=model, first=first, last=last)
        local = CostGraph(
            model=model, names=[str(r["topo"]) for r in found], ops=["" for _ in found],
            device_ms=[float(r["device_ms"]) for r in found],
            server_ms=[float(r["server_ms"]) for r in found],
            pinned=[bool(r["pinned"]) for r in found],
            tensors=[
                CostTensor(t["tensor"], int(r["topo"]) - first,
                           tuple(int(c) - first for c in t["consumers"]), 0.0,
                           float(t["crossing_ms"]))
                for r in found for t in r["tensors"] if t["consumers"]
            ],
            labels_ms=chain.labels_ms,
            outputs=[i for i, r in enumerate(found) if r["output"]],
        )
        row = [entry - first if entry >= 0 else -1, *range(max(entry + 1, 0) - first,
                                                            last - first + 1)]
        return solve_segment(local, row, bool(chain.closed[k]), set(), labels)

    def write_partition(self, result: Partition) -> dict[str, int]:
        """Labels and a current (:Partition) node, replacing the old ones in one transaction."""
        written: dict[str, int] = self._write(lambda tx: _write_partition(tx, result))
        return written

    def solve_and_write(
        self, costs: CostGraph, sha256: str, solve: Callable[[Rows], Partition]
    ) -> tuple[Partition, dict[str, int]]:
        """One transaction under the model's lock: check that the stored model is still the
        file `sha256` names, put `costs` on it, solve reading it through `solve(rows)`, and
        write the cut back. Concurrent partitions of one model for other scenarios therefore
        never see each other's delays, and a re-ingest of another file under the same name
        that commits in between is refused (ModelChangedError) instead of mixing the two."""
        def work(tx: ManagedTransaction) -> tuple[Partition, dict[str, int]]:
            stored = tx.run(queries.load("model_lock"), name=costs.model).single(strict=True)[0]
            if stored != sha256:
                raise ModelChangedError(
                    f"model {costs.model!r} was replaced by another file while this partition "
                    "ran (another process ingested it); nothing was written: run it again")
            _set_costs(tx, costs)
            result = solve(_tx_rows(tx))
            return result, _write_partition(tx, result)

        done: tuple[Partition, dict[str, int]] = self._write(work)
        return done

    def run_saved(self, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        """A saved query, read-only: `splitcut query` can change nothing."""
        return self._read(name, **params)


def _set_costs(tx: ManagedTransaction, costs: CostGraph) -> None:
    """A scenario's delays onto a stored model; its first statement takes the model's lock."""
    outputs = set(costs.outputs)
    layers = [
        {"topo": i, "device_ms": float(costs.device_ms[i]),
         "server_ms": float(costs.server_ms[i]), "pinned": bool(costs.pinned[i]),
         "output": i in outputs}
        for i in range(len(costs))
    ]
    feeds = [{"producer": t.producer, "tensor": t.name, "crossing_ms": t.crossing_ms}
             for t in costs.tensors]
    tx.run(queries.load("model_costs"), model=costs.model,
           scenario=json.dumps(costs.scenario, sort_keys=True),
           device=costs.scenario.get("device"), server=costs.scenario.get("server"),
           latency_ms=costs.latency_ms, labels_ms=costs.labels_ms,
           layers=layers, feeds=feeds).consume()


def _write_partition(tx: ManagedTransaction, result: Partition) -> dict[str, int]:
    data = result.to_dict()
    params = {
        "model": result.graph.model,
        "scenario": json.dumps(result.graph.scenario, sort_keys=True),
        "device": list(result.device),
        "total_ms": result.delay.total,
        "device_compute_ms": result.delay.device_compute,
        "server_compute_ms": result.delay.server_compute,
        "crossing_ms": result.delay.crossing,
        "cut_tensors": data["partition"]["cut_tensors"],
        "method": result.method,
        "scenario_key": scenario_key(result.graph.scenario),
        "baselines": {f"{k}_ms": v for k, v in result.baselines_ms.items()},
    }
    record = tx.run(queries.load("write_partition"), params).single()
    return {"layers": int(record["layers"]), "device": int(record["device"])} if record \
        else {"layers": 0, "device": 0}


def _tx_rows(tx: ManagedTransaction) -> Rows:
    """Saved queries run inside `tx`, as rows."""
    def rows(query: str, /, **params: Any) -> list[dict[str, Any]]:
        return [record.data() for record in tx.run(queries.load(query), params)]

    return rows


def _detect_blocks(tx: ManagedTransaction, model: str, names: dict[str, str]) -> None:
    """Cut vertices, segments, keys and types computed by the Cypher in `cypher/`.

    The only work left to Python is hashing each segment key to its signature; `names`
    (signature -> readable name) labels new block types.
    """
    tx.run(queries.load("detect_blocks_segments"), model=model).consume()
    tx.run(queries.load("detect_blocks_chain"), model=model).consume()
    rows = []
    for record in tx.run(queries.load("detect_blocks_keys"), model=model):
        key = record["key"]
        sig = signature(key)
        rows.append({"uid": record["uid"], "signature": sig,
                     "name": names.get(sig, f"block {sig[:6]}"), "size": key.count("](")})
    tx.run(queries.load("detect_blocks_types"), rows=rows).consume()


def layer_uid(model: str, layer: str) -> str:
    """A layer's unique key: fixed-size (names of any length index) and collision-free (model
    'a' with layer 'b/c' and model 'a/b' with layer 'c' differ), the name kept beside it."""
    return hashlib.sha256(json.dumps([model, layer]).encode()).hexdigest()


def ingest_rows(graph: LayerGraph, costs: CostGraph) -> tuple[list[dict[str, Any]],
                                                              list[dict[str, Any]]]:
    """A layer graph and its delays as plain rows for UNWIND: (layers, feeds). Pure."""
    layers = list(graph)
    layer_rows = [
        {"uid": layer_uid(graph.name, layer.name), "name": layer.name, "op": layer.op, "topo": i,
         "flops": layer.flops, "macs": layer.macs, "params": layer.params,
         "out_bytes": layer.out_bytes, "device_ms": float(costs.device_ms[i]),
         "server_ms": float(costs.server_ms[i]), "pinned": bool(costs.pinned[i]),
         "module": layer.module, "key": layer_key(graph, layer)}
        for i, layer in enumerate(layers)
    ]
    feed_rows = []
    for t in costs.tensors:
        producer = layers[t.producer]
        key = tensor_key(graph, producer, t.name)
        for c in t.consumers:
            feed_rows.append({
                "producer": t.producer, "consumer": c, "tensor": t.name, "bytes": t.bytes,
                "crossing_ms": t.crossing_ms, "position": layers[c].inputs.index(t.name),
                "tensor_key": key,
            })
    return layer_rows, feed_rows

