// The last step of deleting a model: its (:Model) node, if no version of it is current or
// staged any more. An ingest of the name that starts meanwhile can join a layer to the node
// between the check and the commit: the delete then fails, and the node stays, the ingest's.
// $name: model name. Returns nothing.
// Internal: a step splitcut runs itself; `splitcut query` does not offer it.
MATCH (m:Model {name: $name})
WHERE m.version IS NULL AND NOT (m)-[:HAS_LAYER]->()
DELETE m
