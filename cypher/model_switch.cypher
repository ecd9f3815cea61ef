// Make a fully staged version current, in one small transaction under the model's lock (its
// first statement is model_lock). Old partitions and sweep policies go with the old version; the old version's
// layers and blocks are deleted afterwards, in batches, by model_sweep.
// $name, $version (the staged one), $sha256, $source, $opset, $family (or null), $layer_count, $scenario (JSON
// text of the delays' scenario), $device, $server, $latency_ms, $labels_ms.
// Returns current (the version now current) and status: 'created', 'replaced', 'unchanged'
// (the current version is the same file: the staged one is dropped), 'superseded' (an ingest
// started later is already current) or 'incomplete' (the staged version lacks layers: a
// concurrent delete swept it).
// Internal: a step splitcut runs itself; `splitcut query` does not offer it.
MATCH (m:Model {name: $name})
CALL (m) {
  MATCH (l:Layer {model: m.name, version: $version}) WHERE l.topo >= 0  // (by the index)
  RETURN count(l) AS staged
}
WITH m, CASE WHEN m.version IS NOT NULL AND m.sha256 = $sha256 THEN 'unchanged'
          WHEN m.version IS NOT NULL AND m.version > $version THEN 'superseded'
          WHEN staged <> $layer_count THEN 'incomplete'
          WHEN m.version IS NULL THEN 'created'
          ELSE 'replaced' END AS status
CALL (m, status) {
  WITH m, status WHERE status IN ['created', 'replaced']
  SET m += {version: $version, sha256: $sha256, source: $source, opset: $opset, family: $family,
            layer_count: $layer_count, scenario: $scenario, device: $device, server: $server,
            latency_ms: $latency_ms, labels_ms: $labels_ms},
      m.ingested_at = datetime()
  WITH m
  MATCH (p:Partition)-[:OF]->(m)
  DETACH DELETE p
}
CALL (m, status) {
  WITH m, status WHERE status IN ['created', 'replaced']
  MATCH (policy:Policy)-[:OF]->(m)
  CALL (policy) { MATCH (p:Partition)-[:IN]->(policy) DETACH DELETE p }
  DETACH DELETE policy
}
RETURN status, m.version AS current
