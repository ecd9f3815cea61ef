// One batch of a staged version's layers and the data edges between them (readers see a version
// only once model_switch makes it current). The (:Model) node exists (model_lock). Batches are
// independent, so several are written at once; each edge finds its two ends by position in the
// batch's list of new layers. Edges from an earlier batch come after (ingest_feeds).
// $model: model name; $version: the staged version; $rows: [{uid, name, op, topo, flops, macs,
//   params, out_bytes, device_ms, server_ms, pinned, module, key}] in topological order;
//   $feeds: [{p, c, tensor, bytes, crossing_ms, position, tensor_key}], p and c the producer's
//   and the consumer's positions in $rows. Returns feeds (count).
// A batch that is already stored (its transaction committed, but the acknowledgement was lost
// and the write retried) is not written again.
// Internal: a step splitcut runs itself; `splitcut query` does not offer it.
MATCH (m:Model {name: $model})
WHERE NOT EXISTS { MATCH (:Layer {uid: $rows[0].uid}) }
UNWIND $rows AS row
CREATE (l:Layer {uid: row.uid, model: $model, version: $version, name: row.name, op: row.op,
                 topo: row.topo, flops: row.flops, macs: row.macs, params: row.params,
                 out_bytes: row.out_bytes, device_ms: row.device_ms, server_ms: row.server_ms,
                 pinned: row.pinned, module: row.module, key: row.key})
CREATE (m)-[:HAS_LAYER]->(l)
WITH collect(l) AS nodes
WHERE size(nodes) > 0  // (none when the batch was stored already)
UNWIND $feeds AS f
WITH nodes[f.p] AS p, nodes[f.c] AS c, f
CREATE (p)-[:FEEDS {tensor: f.tensor, bytes: f.bytes, crossing_ms: f.crossing_ms,
                    position: f.position, tensor_key: f.tensor_key}]->(c)
RETURN count(*) AS feeds
