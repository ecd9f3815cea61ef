// The compressed chain under the model's current delays: per block, its span, type and the
// sums the block-wise scan needs, and its inner problem (what an inner cut depends on) so that
// blocks share an inner solution only when that problem is identical.
// $model: model name. Returns index, entry, exit, closed, signature, device, server, cheapest
// (sum of each layer's cheaper side), exit_cross (crossing of the tensors the exit produces),
// last_pinned (last pinned layer in the block, or null), outputs (layers producing a model
// output), inner_layers ([offset, device_ms, server_ms, pinned, output] per layer, offsets from
// the entry) and inner_tensors ([producer offset, tensor key, crossing_ms, consumer offset] per
// data edge inside the block, the entry's included), in block order; and the model's
// latency_ms and labels_ms.
// Answers: One model's chain under its current delays: per block, the solver's sums.
MATCH (m:Model {name: $model}) WHERE m.version IS NOT NULL
MATCH (b:Block {model: $model, version: m.version})-[:CONTAINS]->(l:Layer)
WHERE b.index >= 0  // (the (model, version, index) index needs a predicate on each)
WITH m, b, l ORDER BY l.topo
WITH m, b, sum(l.device_ms) AS device, sum(l.server_ms) AS server,
     sum(CASE WHEN l.device_ms < l.server_ms THEN l.device_ms ELSE l.server_ms END) AS cheapest,
     max(CASE WHEN l.pinned THEN l.topo END) AS last_pinned,
     collect(CASE WHEN l.output THEN l.topo END) AS outputs,
     collect([l.topo - b.entry, l.device_ms, l.server_ms, l.pinned, coalesce(l.output, false)])
       AS inner_layers
OPTIONAL MATCH (:Layer {model: $model, version: m.version, topo: b.exit})-[f:FEEDS]->()
WITH m, b, device, server, cheapest, last_pinned, outputs, inner_layers,
     collect(DISTINCT [f.tensor, f.crossing_ms]) AS outs
CALL (b) {
  MATCH (p:Layer {model: b.model, version: b.version})-[f:FEEDS]->(c:Layer)
  WHERE b.entry <= p.topo <= b.exit AND b.entry < c.topo <= b.exit
  RETURN collect([p.topo - b.entry, f.tensor_key, f.crossing_ms, c.topo - b.entry])
    AS inner_tensors
}
RETURN b.index AS index, b.entry AS entry, b.exit AS exit, b.closed AS closed,
       b.signature AS signature, device, server, cheapest, last_pinned, outputs,
       reduce(s = 0.0, o IN outs | s + coalesce(o[1], 0.0)) AS exit_cross,
       inner_layers, inner_tensors, m.latency_ms AS latency_ms, m.labels_ms AS labels_ms
ORDER BY index
