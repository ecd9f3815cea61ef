// The stored version of a model, if any.
// $name: model name. Returns sha256, layer_count, scenario (JSON text), latency_ms, labels_ms
// (no row when absent).
MATCH (m:Model {name: $name})
RETURN m.sha256 AS sha256, m.layer_count AS layer_count, m.scenario AS scenario,
       m.latency_ms AS latency_ms, m.labels_ms AS labels_ms
