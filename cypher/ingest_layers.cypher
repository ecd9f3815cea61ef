// One batch of a staged version's layers and the data edges between them (readers see a version
// only once model_switch makes it current). The (:Model) node exists (model_lock). Batches are
// independent, so several are written at once; each edge finds its two ends by position in the
// batch's list of new layers. Edges from an earlier batch come after (ingest_feeds).
// $model: model name; $version: the staged version; $rows: [[uid, name, op, topo, flops, macs,
//   params, out_bytes, device_ms, server_ms, pinned, module, key, weight_only, output]] in
//   topological order (weight_only: weights and constants alone make what the layer reads;
//   output: it produces a model output (the labels' term); each stored only where true, so
//   other layers keep their 15 properties);
//   $feeds: [[p, c, tensor, bytes, crossing_ms, position, tensor_key]], p and c the producer's
//   and the consumer's positions in $rows. Returns feeds (count).
// Rows are lists, not maps: the server decodes no field names (15 per layer, 7 per edge) and
// reads each field by position.
// A batch that is already stored (its transaction committed, but the acknowledgement was lost
// and the write retried) is not written again.
// Internal: a step splitcut runs itself; `splitcut query` does not offer it.
MATCH (m:Model {name: $model})
WHERE NOT EXISTS { MATCH (:Layer {model: $model, version: $version, topo: $rows[0][3]}) }
UNWIND $rows AS row
CREATE (l:Layer {uid: row[0], model: $model, version: $version, name: row[1], op: row[2],
                 topo: row[3], flops: row[4], macs: row[5], params: row[6], out_bytes: row[7],
                 device_ms: row[8], server_ms: row[9], pinned: row[10], module: row[11],
                 key: row[12], weight_only: CASE WHEN row[13] THEN true END,
                 output: CASE WHEN row[14] THEN true END})
CREATE (m)-[:HAS_LAYER]->(l)
WITH collect(l) AS nodes
WHERE size(nodes) > 0  // (none when the batch was stored already)
UNWIND $feeds AS f
WITH nodes[f[0]] AS p, nodes[f[1]] AS c, f
CREATE (p)-[:FEEDS {tensor: f[2], bytes: f[3], crossing_ms: f[4], position: f[5],
                    tensor_key: f[6]}]->(c)
RETURN count(*) AS feeds
