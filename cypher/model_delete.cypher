// Retire a model in one small transaction: its version is unset and its partitions and sweep
// policies deleted, so from then on no reader sees it; model_sweep then deletes its layers and
// blocks (every version that started before this delete) in batches, and model_drop the node.
// `retired` tells an ingest staging meanwhile that its version was swept (model_state).
// Block types stay: other models share them.
// $name: model name; $before: a new version (version_new), later than every version it
// retires. Returns existed (no row for an unknown model).
// Internal: a step splitcut runs itself; `splitcut query` does not offer it.
MATCH (m:Model {name: $name})
SET m.retired = $before
REMOVE m.version, m.sha256
WITH m
CALL (m) { MATCH (p:Partition)-[:OF]->(m) DETACH DELETE p }
CALL (m) { MATCH (policy:Policy)-[:OF]->(m)
           CALL (policy) { MATCH (p:Partition)-[:IN]->(policy) DETACH DELETE p }
           DETACH DELETE policy }
RETURN m.version IS NULL AS existed
