// A model's current version as stored; no row for a model without one.
// $name: model name. Returns sha256, version, layer_count, scenario (JSON text), latency_ms,
// labels_ms, family.
// Internal: a step splitcut runs itself; `splitcut query` does not offer it.
MATCH (m:Model {name: $name}) WHERE m.version IS NOT NULL
RETURN m.sha256 AS sha256, m.version AS version, m.layer_count AS layer_count,
       m.scenario AS scenario, m.latency_ms AS latency_ms, m.labels_ms AS labels_ms,
       m.family AS family
