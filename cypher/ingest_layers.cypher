// One batch of a staged version's layers (readers see a version only once model_switch makes it
// current). The (:Model) node exists (model_lock).
// $model: model name; $version: the staged version; $rows: [{uid, name, op, topo, flops, macs,
//   params, out_bytes, device_ms, server_ms, pinned, module, key}]. Returns layers (count).
// Internal: a step splitcut runs itself; `splitcut query` does not offer it.
MATCH (m:Model {name: $model})
UNWIND $rows AS row
CREATE (l:Layer {uid: row.uid, model: $model, version: $version, name: row.name, op: row.op,
                 topo: row.topo, flops: row.flops, macs: row.macs, params: row.params,
                 out_bytes: row.out_bytes, device_ms: row.device_ms, server_ms: row.server_ms,
                 pinned: row.pinned, module: row.module, key: row.key})
CREATE (m)-[:HAS_LAYER]->(l)
RETURN count(l) AS layers
