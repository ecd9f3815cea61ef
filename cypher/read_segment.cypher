// One segment's inside for the block-wise solver: the layers from $first to $last (its entry
// and its own layers) with their delays, and the tensors passed among them.
// $model: model name; $first, $last: topological positions. Returns topo, device_ms,
// server_ms, pinned, output, tensors ([{tensor, crossing_ms, consumers}]), in order.
// Internal: a step splitcut runs itself; `splitcut query` does not offer it.
MATCH (m:Model {name: $model}) WHERE m.version IS NOT NULL
MATCH (l:Layer {model: $model, version: m.version}) WHERE $first <= l.topo <= $last
OPTIONAL MATCH (l)-[f:FEEDS]->(c:Layer) WHERE $first <= c.topo <= $last
WITH l, f.tensor AS tensor, f.crossing_ms AS crossing_ms, collect(c.topo) AS consumers
WITH l, collect(CASE WHEN tensor IS NULL THEN null
                     ELSE {tensor: tensor, crossing_ms: crossing_ms, consumers: consumers} END)
        AS tensors
RETURN l.topo AS topo, l.device_ms AS device_ms, l.server_ms AS server_ms, l.pinned AS pinned,
       coalesce(l.output, false) AS output, tensors
ORDER BY topo
