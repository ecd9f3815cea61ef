// The compressed chain under the model's current delays: per block, its span, type and the
// sums the block-wise scan needs; no layer leaves the database.
// $model: model name. Returns index, entry, exit, closed, signature, device, server, cheapest
// (sum of each layer's cheaper side), exit_cross (crossing of the tensors the exit produces),
// last_pinned (last pinned layer in the block, or null), in block order.
MATCH (b:Block {model: $model})-[:CONTAINS]->(l:Layer)
WITH b, sum(l.device_ms) AS device, sum(l.server_ms) AS server,
     sum(CASE WHEN l.device_ms < l.server_ms THEN l.device_ms ELSE l.server_ms END) AS cheapest,
     max(CASE WHEN l.pinned THEN l.topo END) AS last_pinned
OPTIONAL MATCH (:Layer {model: $model, topo: b.exit})-[f:FEEDS]->()
WITH b, device, server, cheapest, last_pinned,
     collect(DISTINCT [f.tensor, f.crossing_ms]) AS outs
RETURN b.index AS index, b.entry AS entry, b.exit AS exit, b.closed AS closed,
       b.signature AS signature, device, server, cheapest, last_pinned,
       reduce(s = 0.0, o IN outs | s + coalesce(o[1], 0.0)) AS exit_cross
ORDER BY index
