// A model's activation tensors: producer, consumers (topological positions), size and delay.
// $model: model name. Returns tensor, producer, consumers, bytes, crossing_ms.
// Internal: a step splitcut runs itself; `splitcut query` does not offer it.
MATCH (m:Model {name: $model}) WHERE m.version IS NOT NULL
MATCH (p:Layer {model: $model, version: m.version})-[f:FEEDS]->(c:Layer)
WHERE p.topo >= 0  // (the (model, version, topo) index needs a predicate on each)
WITH f.tensor AS tensor, p.topo AS producer, c.topo AS consumer, f.bytes AS bytes,
     f.crossing_ms AS crossing_ms
ORDER BY producer, tensor, consumer
RETURN tensor, producer, collect(consumer) AS consumers, bytes, crossing_ms
ORDER BY producer, tensor
