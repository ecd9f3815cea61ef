// A model's layers in topological order with their delays.
// $model: model name. Returns name, op, topo, device_ms, server_ms, pinned, flops, macs, params,
// output (produces a model output).
// Internal: a step splitcut runs itself; `splitcut query` does not offer it.
MATCH (m:Model {name: $model}) WHERE m.version IS NOT NULL
MATCH (l:Layer {model: $model, version: m.version}) WHERE l.topo >= 0  // (the index needs all 3)
RETURN l.name AS name, l.op AS op, l.topo AS topo, l.device_ms AS device_ms,
       l.server_ms AS server_ms, l.pinned AS pinned, l.flops AS flops, l.macs AS macs,
       l.params AS params, coalesce(l.output, false) AS output
ORDER BY l.topo
