// The data edges between batches of a staged version (ingest_layers wrote each batch with the
// edges inside it): both ends found by the (model, version, topo) index.
// $model, $version; $feeds: [{producer, consumer, tensor, bytes, crossing_ms, position,
//   tensor_key}] (topological positions). Returns feeds (count of edges created).
// An edge already stored (a retried write whose commit went through) is not written again: a
// consumer has one edge per input position.
// Internal: a step splitcut runs itself; `splitcut query` does not offer it.
UNWIND $feeds AS f
MATCH (p:Layer {model: $model, version: $version, topo: f.producer})
MATCH (c:Layer {model: $model, version: $version, topo: f.consumer})
WHERE NOT EXISTS { MATCH (p)-[:FEEDS {position: f.position}]->(c) }
CREATE (p)-[:FEEDS {tensor: f.tensor, bytes: f.bytes, crossing_ms: f.crossing_ms,
                    position: f.position, tensor_key: f.tensor_key}]->(c)
RETURN count(*) AS feeds
