// One batch of data edges: the delay-weighted (:Layer)-[:FEEDS]->(:Layer) relationships.
// $model: model name; $rows: [{producer, consumer, tensor, bytes, crossing_ms, position,
//   tensor_key}] with producer/consumer topological positions. Returns nothing.
UNWIND $rows AS row
MATCH (p:Layer {model: $model, topo: row.producer})
MATCH (c:Layer {model: $model, topo: row.consumer})
CREATE (p)-[:FEEDS {tensor: row.tensor, bytes: row.bytes, crossing_ms: row.crossing_ms,
                    position: row.position, tensor_key: row.tensor_key}]->(c)
