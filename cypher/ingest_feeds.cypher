// One batch of a staged version's data edges, between layers already written.
// $model, $version; $feeds: [{producer, consumer, tensor, bytes, crossing_ms, position,
//   tensor_key}] with topological positions. Returns feeds (count).
// Internal: a step splitcut runs itself; `splitcut query` does not offer it.
UNWIND $feeds AS f
MATCH (p:Layer {model: $model, version: $version, topo: f.producer})
MATCH (c:Layer {model: $model, version: $version, topo: f.consumer})
CREATE (p)-[:FEEDS {tensor: f.tensor, bytes: f.bytes, crossing_ms: f.crossing_ms,
                    position: f.position, tensor_key: f.tensor_key}]->(c)
RETURN count(*) AS feeds
