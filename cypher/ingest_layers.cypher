// All layers of a model and their data edges, in one statement: edges join layers by position
// in the created list, so no index lookup per edge.
// $model: model name; $rows: [{uid, name, op, topo, flops, macs, params, out_bytes, device_ms,
//   server_ms, pinned, module, key}] in topological order; $feeds: [{producer, consumer, tensor,
//   bytes, crossing_ms, position, tensor_key}] with topological positions. Returns layers, feeds.
MATCH (m:Model {name: $model})
UNWIND $rows AS row
CREATE (l:Layer {uid: row.uid, model: $model, name: row.name, op: row.op, topo: row.topo,
                 flops: row.flops, macs: row.macs, params: row.params, out_bytes: row.out_bytes,
                 device_ms: row.device_ms, server_ms: row.server_ms, pinned: row.pinned,
                 module: row.module, key: row.key})
CREATE (m)-[:HAS_LAYER]->(l)
WITH collect(l) AS layers
CALL (layers) {
  UNWIND $feeds AS f
  WITH layers[f.producer] AS p, layers[f.consumer] AS c, f
  CREATE (p)-[:FEEDS {tensor: f.tensor, bytes: f.bytes, crossing_ms: f.crossing_ms,
                      position: f.position, tensor_key: f.tensor_key}]->(c)
  RETURN count(*) AS feeds
}
RETURN size(layers) AS layers, feeds
