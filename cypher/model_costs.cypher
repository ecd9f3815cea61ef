// Replace a model's delays with those of another scenario (structure stays).
// $model: model name; $scenario: JSON text; $device, $server: profile names;
// $latency_ms: per-iteration latency when anything crosses; $labels_ms: labels up when the
// server holds a model output; $layers: [{topo, device_ms, server_ms, pinned, output}];
// $feeds: [{producer, tensor, crossing_ms}]. Returns nothing.
// Internal: a step splitcut runs itself; `splitcut query` does not offer it.
MATCH (m:Model {name: $model}) WHERE m.version IS NOT NULL
SET m.scenario = $scenario, m.device = $device, m.server = $server,
    m.latency_ms = $latency_ms, m.labels_ms = $labels_ms
WITH m
CALL (m) {
  UNWIND $layers AS row
  MATCH (l:Layer {model: m.name, version: m.version, topo: row.topo})
  SET l.device_ms = row.device_ms, l.server_ms = row.server_ms, l.pinned = row.pinned,
      l.output = row.output
}
CALL (m) {
  UNWIND $feeds AS row
  MATCH (p:Layer {model: m.name, version: m.version, topo: row.producer})-[f:FEEDS {tensor: row.tensor}]->()
  SET f.crossing_ms = row.crossing_ms
}
RETURN m.name AS model
