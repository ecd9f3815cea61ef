"""The Neo4j store: the only module that imports `neo4j`.

Every query comes from `cypher/` by name and takes parameters; nothing a user types is spliced
into a query string, labels included (`SET l:$(label)`: :Device, :Server or a chain's tier
names, checked to be letters, digits and underscores). A model is staged as a new version in
batches no reader sees (several written at once, each retried on transient errors) and made
current by one small transaction, so readers see it whole or not at all; re-ingesting the same
file changes nothing.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import Any, TypeVar

import neo4j
from neo4j import GraphDatabase, ManagedTransaction, Transaction
from neo4j.exceptions import (
    AuthError,
    DriverError,
    Neo4jError,
    ServiceUnavailable,
    SessionExpired,
)

from toolkit import queries
from toolkit.blocks import (
    BlockStructure,
    BlockType,
    Segment,
    read_input,
    segment_spans,
    signature,
)
from toolkit.collector import collector_paused
from toolkit.costgraph import CostGraph
from toolkit.costs import scenario_key
from toolkit.graph import LayerGraph
from toolkit.partition import Partition
from toolkit.partition.stored import Rows
from toolkit.partition.sweep import SweepResult
from toolkit.partition.tiers import TierPartition, tier_label
from toolkit.store.connection import (
    MAX_MODEL_NAME,
    Connection,
    ModelChangedError,
    StoreError,
    TransactionTooLargeError,
)
from toolkit.store.rows import Batch, batched, by_layers, ingest_rows, node_uids

log = logging.getLogger(__name__)
Read = TypeVar("Read")
Item = TypeVar("Item")
Solved = TypeVar("Solved", Partition, TierPartition)


class Store:
    """A connection to one Neo4j database, used as a context manager."""

    def __init__(self, connection: Connection, batch_rows: int = 2_500, writers: int = 2
                 ) -> None:
        self.connection = connection
        # rows per transaction when a model is written in batches: 2,500 keeps two writers
        # busy to the end of a 20,000-layer ingest (eight batches; with four of 5,000 it took
        # 6% longer) and is as fast at 100,000 layers (docs/benchmarks.md)
        self.batch_rows = batch_rows
        self.writers = writers  # batches of an ingest written at once
        self.schema_ensured = False  # ensure_schema ran through this store
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

    def _write(self, work: Callable[[Transaction], Any]) -> Any:
        """`work` in one write transaction, run again from the start on transient failures (a
        lost connection, a deadlock, a leader switch) with exponential backoff for up to
        `retry_seconds`. Out of transaction memory is never retried, whether `work` or the
        commit runs out: running it again cannot make it fit (the driver's own retry policy
        would)."""
        deadline = time.monotonic() + self.connection.retry_seconds
        pause = 0.5
        with self._errors(writing=True), self._session() as session:
            while True:
                try:
                    with session.begin_transaction() as tx:
                        result = work(tx)
                        tx.commit()
                        return result
                except (Neo4jError, DriverError) as exc:
                    if "OutOfMemory" in (getattr(exc, "code", None) or ""):
                        raise TransactionTooLargeError(
                            "the write needs more memory than Neo4j at "
                            f"{self.connection.uri} allows one transaction "
                            "(db.memory.transaction.max); it was rolled back, so nothing was "
                            "changed: raise that limit and the heap (NEO4J_LOCAL_TX_MAX, "
                            "NEO4J_LOCAL_HEAP for scripts/neo4j-local)") from exc
                    if not exc.is_retryable() or time.monotonic() + pause > deadline:
                        raise
                    log.info("retrying a write in %.1f s after %s", pause, type(exc).__name__)
                    time.sleep(pause * random.uniform(0.8, 1.2))
                    pause = min(pause * 2, 10.0)

    def _read(self, query: str, /, **params: Any) -> list[dict[str, Any]]:
        """A saved query in a read transaction (`query` is positional-only, so a parameter may
        be called `query` or `self`)."""
        text = queries.load(query)

        def work(tx: ManagedTransaction) -> list[dict[str, Any]]:
            return [record.data() for record in tx.run(text, params)]

        with self._errors(), self._session() as session:
            return list(session.execute_read(work))

    def ensure_schema(self) -> None:
        """The constraints and indexes of `cypher/schema.cypher`, created where missing. An
        ingest runs this once per store: without them a write scans whole labels, and two
        concurrent writers could each create the same block type."""
        for statement in queries.statements("schema"):
            with self._errors(), self._session() as session:
                session.run(statement).consume()
        self.schema_ensured = True

    # ingest ---------------------------------------------------------------------------------

    def ingest(
        self, graph: LayerGraph, costs: CostGraph, sha256: str, source: str, opset: int,
        names: dict[str, str] | None = None, family: str | None = None,
    ) -> str:
        """Write a model whole, with its blocks detected: 'created', 'replaced', 'unchanged'
        (the stored version is this file: nothing written) or 'superseded' (an ingest of the
        same name started later finished first and stays). `family` (e.g. 'resnet') groups
        architectures in corpus queries.

        The new version is staged in batches of `batch_rows` that no reader sees (every query
        reads the version its (:Model) node names), then made current by one small
        transaction under the model's lock (`model_switch`); the versions it replaces, and any
        an ingest abandoned half-way, are then deleted in batches (`model_sweep`). So a model
        of any size ingests in transactions of bounded size, and readers see the old version
        or the new one, whole, never a mix.
        """
        if len(graph.name) > MAX_MODEL_NAME:
            raise StoreError(f"a model name of {len(graph.name)} characters cannot be stored "
                             f"(at most {MAX_MODEL_NAME}); give a shorter one with --name")
        if not self.schema_ensured:
            self.ensure_schema()
        stored = self._read("model_get", name=graph.name)
        if stored and stored[0]["sha256"] == sha256:
            if family is not None and stored[0]["family"] != family:
                self._statement("model_family", name=graph.name, family=family)
            return "unchanged"
        version = str(self._read("version_new")[0]["version"])
        self._write(lambda tx: tx.run(queries.load("model_lock"), name=graph.name).consume())
        try:
            self._stage(graph, costs, version, names or {})
            switched: tuple[str, str | None] = self._write(
                lambda tx: _switch(tx, graph, costs, version,
                                   {"sha256": sha256, "source": source, "opset": opset,
                                    "family": family}))
            status, current = switched
        except StoreError as exc:
            self._sweep(graph.name, None, version)  # best effort; else the next write does
            status, current = self._overtaken(graph.name, version, exc)
        except BaseException:
            self._sweep(graph.name, None, version)
            raise
        self._sweep(graph.name, current, None if current == version else version)
        if status == "incomplete":
            self._statement("model_drop", name=graph.name)  # (the switch's lock made it again)
            raise StoreError(f"model {graph.name!r} was deleted while this ingest wrote it; "
                             "nothing was changed: run it again")
        return status

    def _overtaken(self, model: str, version: str, exc: StoreError) -> tuple[str, str | None]:
        """After staging `version` failed: ('superseded', current) where an ingest started
        later made its version current, ('incomplete', None) where the model was deleted
        meanwhile (each sweeps what this one was writing, so a statement of it can find a node
        gone under it); `exc` again where neither happened."""
        state = self._read("model_state", name=model)
        if not state:
            return "incomplete", None  # (its node was made before staging: dropped since)
        current, retired = state[0]["version"], state[0]["retired"]
        if current is not None and current > version:
            return "superseded", str(current)
        if retired is not None and retired > version:
            return "incomplete", None
        raise exc

    @collector_paused
    def _stage(self, graph: LayerGraph, costs: CostGraph, version: str,
               names: dict[str, str]) -> None:
        """A new version's layers, edges and blocks, each batch its own transaction, `writers`
        of them at a time. Logs (INFO) how long each phase took, also as the record's
        `phases_s` ({"layers": s, "blocks": s})."""
        start = time.perf_counter()
        where = {"model": graph.name, "version": version}
        across: list[list[Any]] = []  # edges between batches, once both ends are written

        def write(batch: Batch) -> None:
            rows, inside, earlier = batch()
            across.extend(earlier)
            self._statement("ingest_layers", **where, rows=rows, feeds=inside)

        self._each(write, ingest_rows(graph, costs, version, self.batch_rows))
        for feeds in batched(across, self.batch_rows):
            self._statement("ingest_feeds", **where, feeds=feeds)
        written = time.perf_counter()
        self._detect_blocks(graph.name, version, len(graph), names, read_input(graph))
        phases = {"layers": written - start, "blocks": time.perf_counter() - written}
        log.info("%r: %d layers and their edges written in %.2f s, blocks detected in %.2f s",
                 graph.name, len(graph), phases["layers"], phases["blocks"],
                 extra={"phases_s": phases})

    def _detect_blocks(self, model: str, version: str, layer_count: int,
                       names: dict[str, str], read_input: list[int]) -> None:
        """Cut vertices, segments, keys and types computed by the Cypher in `cypher/`, written
        in batches of about `batch_rows` layers, `writers` at once (independent until
        `detect_blocks_link` joins their chains).

        Python only cuts the work into batches, joins the cut vertices of the ranges scanned
        at once (`_joined_cuts`) and hashes each segment key to its signature;
        `names` (signature -> readable name) labels new block types; `read_input` are the
        positions of the layers that read a model input (`toolkit.blocks.read_input`: the store
        keeps no node for an input).
        """
        where = {"model": model, "version": version}
        parts = max(1, min(self.writers, layer_count // self.batch_rows))
        bounds = [layer_count * part // parts for part in range(parts + 1)]
        scans: dict[int, dict[str, Any]] = {}

        def scan(part: int) -> None:
            scans[part] = self._statement(
                "detect_blocks_cuts", **where, low=bounds[part], high=bounds[part + 1],
                layer_count=layer_count, read_input=read_input)[0]

        self._each(scan, range(parts))
        spans = segment_spans(_joined_cuts([scans[part] for part in range(parts)]),
                              layer_count)
        blocks: list[dict[str, Any]] = [
            {"uid": uid, "index": i, "entry": entry, "exit": last, "closed": closed}
            for i, ((entry, last, closed), uid) in enumerate(zip(
                spans, node_uids(model, version, range(len(spans))), strict=True))]

        named: dict[str, str] = {}  # the model's types: signature -> its name for them

        def detect(group: list[dict[str, Any]]) -> None:
            types = []
            for record in self._statement("detect_blocks_chain", **where, blocks=group):
                key = record["key"]
                sig = signature(key)
                types.append({"index": record["index"], "signature": sig,
                              "name": names.get(sig, f"block {sig[:6]}"),
                              "size": key.count("](")})
            named.update((t["signature"], t["name"]) for t in types)
            self._statement("detect_blocks_types", **where, rows=types)

        groups = list(by_layers(blocks, self.batch_rows))
        self._each(detect, groups)
        if len(groups) > 1:
            self._statement("detect_blocks_link", **where,
                            firsts=[g[0]["index"] for g in groups[1:]])
        self._name_types(named)

    def _each(self, work: Callable[[Item], object], items: Sequence[Item]) -> None:
        """`concurrently` with this store's number of writers."""
        concurrently(work, items, self.writers)

    def _statement(self, query: str, /, **params: Any) -> list[dict[str, Any]]:
        """A saved query in its own write transaction, as rows."""
        rows: list[dict[str, Any]] = self._write(lambda tx: _tx_rows(tx)(query, **params))
        return rows

    def _sweep(self, model: str, before: str | None, version: str | None) -> None:
        """Delete, in batches, the model's layers and blocks of versions before `before` and of
        `version`, then name the types of the deleted blocks again from the blocks left. Readers
        never see what it deletes, so a failure here loses nothing: it is logged and the next
        write of the model sweeps again."""
        swept: set[str] = set()
        try:
            while True:
                done = self._statement("model_sweep", model=model, before=before,
                                       version=version, batch=self.batch_rows)[0]
                swept.update(done["signatures"])
                if not done["deleted"]:
                    break
            self._name_types(dict.fromkeys(swept))
        except StoreError as exc:
            log.warning("old versions of %r are left for the next write to delete: %s",
                        model, exc)

    def _name_types(self, types: Mapping[str, str | None]) -> None:
        """Name block types after the blocks stored of them (`name_block_types`), by signature:
        with a model's name for the type, only where that name is new to it; with None (the
        types of blocks a sweep deleted), whatever."""
        if types:
            self._statement("name_block_types", types=[
                {"signature": sig, "name": types[sig]} for sig in sorted(types)])

    def delete_model(self, name: str) -> bool:
        """Remove a model (one small transaction hides it, then its nodes go in batches);
        False when there was none."""
        before = str(self._read("version_new")[0]["version"])
        found = self._statement("model_delete", name=name, before=before)
        self._sweep(name, before, None)
        try:
            self._statement("model_drop", name=name)
        except StoreError:
            state = self._read("model_state", name=name)
            if not state or not (state[0]["staged"] or state[0]["version"] is not None):
                raise
            # an ingest of the name began writing it meanwhile: the node is that ingest's
        return bool(found)

    def set_costs(self, costs: CostGraph) -> None:
        """Put another scenario's delays on a stored model."""
        self._write(lambda tx: _set_costs(tx, costs))

    def _reading(self, model: str, rows: Rows | None, read: Callable[[Rows], Read]) -> Read:
        """`read(rows)` as is inside a transaction (`rows`, under the model's lock). Outside,
        each query runs in a transaction of its own, so the model's stored state is compared
        before and after and the read repeated when another version or scenario came in
        meanwhile (the old version may have been half deleted by then)."""
        if rows is not None:
            return read(rows)
        for _ in range(3):
            before = self._read("model_get", name=model)
            result = read(self._read)
            if self._read("model_get", name=model) == before:
                return result
        raise ModelChangedError(f"model {model!r} changed under every one of 3 reads (other "
                                "processes keep writing it): try again when they are done")

    def read_blocks(self, model: str, rows: Rows | None = None) -> BlockStructure:
        """The block structure Cypher detected (through `rows` inside a transaction)."""
        found, off_path = self._reading(model, rows, lambda read: (
            read("read_blocks", model=model), read("read_weight_only", model=model)))
        if not found:
            raise StoreError(f"model {model!r} has no blocks in Neo4j: ingest it first")
        type_of: dict[str, int] = {}
        segments = []
        for row in found:
            tid = type_of.setdefault(row["signature"], len(type_of))
            entry = None if row["entry"] < 0 else int(row["entry"])
            closed = bool(row["closed"])
            segments.append(Segment(int(row["index"]), tuple(range(int(row["entry"]) + 1,
                                                                    int(row["exit"]) + 1)),
                                    entry, int(row["exit"]) if closed else None, tid))
        first = {s.type_id: s for s in reversed(segments)}
        named = {r["signature"]: r["name"] for r in found}
        types = [
            BlockType(t, sig, named[sig], len(first[t].layers),
                      sum(1 for s in segments if s.type_id == t), first[t].exit is not None)
            for sig, t in type_of.items()
        ]
        last = max(s.layers[-1] for s in segments) + 1
        cuts = [s.exit for s in segments if s.exit is not None]
        return BlockStructure(model, last, cuts, segments, types,
                              tuple(int(r["topo"]) for r in off_path))

    # the cost graph and the cut ---------------------------------------------------------------

    def reading(self, model: str, read: Callable[[Rows], Read], rows: Rows | None = None
                ) -> Read:
        """`read(rows)` over one consistent version of `model` (see `_reading`): what
        `toolkit.partition.stored` builds its cost graph and chain from."""
        return self._reading(model, rows, read)

    def write_partition(self, result: Partition | TierPartition) -> dict[str, int]:
        """Labels and a current (:Partition) node, replacing the old ones in one transaction."""
        written: dict[str, int] = self._write(lambda tx: _write_partition(tx, result))
        return written

    def solve_and_write(
        self, costs: CostGraph, sha256: str, solve: Callable[[Rows], Solved]
    ) -> tuple[Solved, dict[str, int]]:
        """One transaction under the model's lock: check that the stored model is still the
        file `sha256` names, put `costs` on it, solve reading it through `solve(rows)`, and
        write the cut back. Concurrent partitions of one model for other scenarios therefore
        never see each other's delays, and a re-ingest of another file under the same name
        that commits in between is refused (ModelChangedError) instead of mixing the two."""
        def work(tx: Transaction) -> tuple[Solved, dict[str, int]]:
            _still_the_file(tx, costs.model, sha256, "partition")
            _set_costs(tx, costs)
            result = solve(_tx_rows(tx))
            return result, _write_partition(tx, result)

        done: tuple[Solved, dict[str, int]] = self._write(work)
        return done

    def write_policy(self, result: SweepResult, sha256: str) -> int:
        """A sweep's policy (`cypher/write_policy.cypher`) in one transaction under the model's
        lock, for the file `sha256` names (else ModelChangedError, nothing written), replacing
        the policy of the same parameter and scenario. Returns the partitions written."""
        def work(tx: Transaction) -> int:
            _still_the_file(tx, result.model, sha256, "sweep")
            data = result.to_dict()
            pieces = [{"from": p["from"], "to": p["to"], "delay_from_ms": p["delay_ms"]["from"],
                       "delay_to_ms": p["delay_ms"]["to"], "tier_of": list(piece.key),
                       "layers_per_tier": p["layers_per_tier"],
                       "cut_tensors": p["crossing"][0]["tensors"]}
                      for p, piece in zip(data["pieces"], result.pieces, strict=True)]
            record = tx.run(queries.load("write_policy"), model=result.model,
                            parameter=result.parameter, unit=result.unit,
                            scenario=json.dumps(data["scenario"], sort_keys=True),
                            scenario_key=f"{result.parameter} sweep: "
                                         f"{scenario_key(data['scenario'])}",
                            tiers=result.tiers, pieces=pieces).single()
            return int(record["partitions"]) if record else 0

        written: int = self._write(work)
        return written

    def run_saved(self, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        """A saved query, read-only: `splitcut query` can change nothing."""
        return self._read(name, **params)


def _still_the_file(tx: Transaction, model: str, sha256: str, work: str) -> None:
    """Take the model's lock for the transaction and check that the model is still the file
    `sha256` names: ModelChangedError (the transaction rolls back: nothing written) where
    another process replaced it with another file or deleted it meanwhile."""
    stored = tx.run(queries.load("model_lock"), name=model).single(strict=True)[0]
    if stored is None:
        raise ModelChangedError(f"model {model!r} was deleted while this {work} ran (another "
                                "process deleted it); nothing was written: run it again")
    if stored != sha256:
        raise ModelChangedError(
            f"model {model!r} was replaced by another file while this {work} ran (another "
            "process ingested it); nothing was written: run it again")


def _switch(tx: Transaction, graph: LayerGraph, costs: CostGraph, version: str,
            file: dict[str, Any]) -> tuple[str, str | None]:
    """Make a staged version current under the model's lock: (status, current version)."""
    tx.run(queries.load("model_lock"), name=graph.name).consume()
    record = tx.run(queries.load("model_switch"), {
        "name": graph.name, "version": version, "layer_count": len(graph),
        "scenario": json.dumps(costs.scenario, sort_keys=True),
        "device": costs.scenario.get("device"), "server": costs.scenario.get("server"),
        "latency_ms": costs.latency_ms, "labels_ms": costs.labels_ms, "family": None, **file,
    }).single(strict=True)
    current = record["current"]
    return str(record["status"]), None if current is None else str(current)


def _set_costs(tx: Transaction, costs: CostGraph) -> None:
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


def _write_partition(tx: Transaction, result: Partition | TierPartition) -> dict[str, int]:
    """Labels per tier (two-sided: :Device and :Server) and the current (:Partition) node."""
    data = result.to_dict()
    if isinstance(result, TierPartition):
        names, tier_of = result.graph.tiers, [int(t) for t in result.tier]
        compute, crossing = list(result.delay.compute), sum(result.delay.crossing)
        cut = data["partition"]["boundaries"][0]["tensors"]
    else:
        on_device = set(result.device)
        names = ["device", "server"]
        tier_of = [0 if i in on_device else 1 for i in range(len(result.graph))]
        compute = [result.delay.device_compute, result.delay.server_compute]
        crossing, cut = result.delay.crossing, data["partition"]["cut_tensors"]
    params = {
        "model": data["model"],
        "scenario": json.dumps(data["scenario"], sort_keys=True),
        "tiers": names, "labels": [tier_label(name) for name in names], "tier_of": tier_of,
        "total_ms": result.delay.total, "compute_ms": compute,
        "device_compute_ms": compute[0], "server_compute_ms": sum(compute[1:]),
        "crossing_ms": crossing, "cut_tensors": cut, "method": result.method,
        "scenario_key": scenario_key(data["scenario"]),
        "baselines": {f"{k}_ms": v for k, v in result.baselines_ms.items()},
    }
    record = tx.run(queries.load("write_partition"), params).single()
    return {"layers": int(record["layers"]), "device": int(record["device"])} if record \
        else {"layers": 0, "device": 0}


def _tx_rows(tx: Transaction) -> Rows:
    """Saved queries run inside `tx`, as rows."""
    def rows(query: str, /, **params: Any) -> list[dict[str, Any]]:
        return [record.data() for record in tx.run(queries.load(query), params)]

    return rows


def in_turn(work: Callable[[Item], object], items: Sequence[Item]) -> None:
    """`work(item)` for every item, one after the other."""
    for item in items:
        work(item)


def _joined_cuts(scans: list[dict[str, Any]]) -> list[int]:
    """The cut vertices of a model from the scans of consecutive ranges of its layers
    (`detect_blocks_cuts`): a range's candidate is one where neither the virtual input nor an
    edge from an earlier range goes beyond it either (the scans' running reach, carried on)."""
    reach = max([0, *(int(scan["input_reach"]) for scan in scans)])
    cuts: list[int] = []
    for scan in scans:
        cuts.extend(int(topo) for topo, before in scan["candidates"] if max(reach, before) <= topo)
        reach = max(reach, int(scan["reach"]))
    return cuts


def concurrently(work: Callable[[Item], object], items: Sequence[Item], writers: int) -> None:
    """`work(item)` for every item, up to `writers` at a time (each writes in transactions of
    its own): while the server writes one batch, the next is packed and sent, and a server
    with two cores writes two. The first failure is raised once the writes already running
    have ended; the rest never start."""
    if writers == 1 or len(items) < 2:
        in_turn(work, items)
        return
    with ThreadPoolExecutor(writers) as pool:  # (leaving it waits for the running ones)
        running: set[Future[object]] = set()
        for item in items:
            if len(running) == writers:
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    future.result()
            running.add(pool.submit(work, item))
        for future in running:
            future.result()
