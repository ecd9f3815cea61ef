// One batch of layers of a model.
// $model: model name; $rows: [{uid, name, op, topo, flops, macs, params, out_bytes, device_ms,
//   server_ms, pinned, module, key}]. Returns nothing.
MATCH (m:Model {name: $model})
UNWIND $rows AS row
CREATE (l:Layer {uid: row.uid, model: $model, name: row.name, op: row.op, topo: row.topo,
                 flops: row.flops, macs: row.macs, params: row.params, out_bytes: row.out_bytes,
                 device_ms: row.device_ms, server_ms: row.server_ms, pinned: row.pinned,
                 module: row.module, key: row.key})
CREATE (m)-[:HAS_LAYER]->(l)
