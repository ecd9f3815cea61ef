// The last step of deleting a model: its (:Model) node, if no version of it is current or
// staged any more (a new ingest of the name may have started meanwhile).
// $name: model name. Returns nothing.
// Internal: a step splitcut runs itself; `splitcut query` does not offer it.
MATCH (m:Model {name: $name})
WHERE m.version IS NULL AND NOT (m)-[:HAS_LAYER]->()
DELETE m
