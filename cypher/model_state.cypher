// A model's version markers, current or not: what an ingest whose staging failed reads to
// tell whether another writer overtook it (a later ingest made its version current, or a
// delete retired every version before `retired`), and a delete whose last step failed, whether
// an ingest began writing the model meanwhile (`staged`). No row for a model without a node.
// $name: model name. Returns version (null: none current), retired (null: never deleted),
// staged (it has layers, of any version).
// Internal: a step splitcut runs itself; `splitcut query` does not offer it.
MATCH (m:Model {name: $name})
RETURN m.version AS version, m.retired AS retired, EXISTS { (m)-[:HAS_LAYER]->() } AS staged
