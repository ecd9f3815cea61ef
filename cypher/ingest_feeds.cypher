// The data edges between batches of a staged version (ingest_layers wrote each batch with the
// edges inside it): both ends found by the (model, version, topo) index.
// $model, $version; $feeds: [[producer, consumer, tensor, bytes, crossing_ms, position,
//   tensor_key]] (topological positions; lists, as in ingest_layers). Returns feeds (count of
//   edges created).
// An edge already stored (a retried write whose commit went through) is not written again: a
// consumer has one edge per input position.
// Internal: a step splitcut runs itself; `splitcut query` does not offer it.
UNWIND $feeds AS f
MATCH (p:Layer {model: $model, version: $version, topo: f[0]})
MATCH (c:Layer {model: $model, version: $version, topo: f[1]})
WHERE NOT EXISTS { MATCH (p)-[:FEEDS {position: f[5]}]->(c) }
CREATE (p)-[:FEEDS {tensor: f[2], bytes: f[3], crossing_ms: f[4], position: f[5],
                    tensor_key: f[6]}]->(c)
RETURN count(*) AS feeds
