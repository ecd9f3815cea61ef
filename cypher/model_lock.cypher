// Take a model's write lock for the rest of the transaction, creating its (:Model) node if new,
// so that concurrent writers of one model run one after the other (MERGE on the unique name
// waits for a concurrent creator to commit instead of failing).
// $name: model name. Returns sha256 and version of the current version (null for a model with
// none: new, or only ever staged by an ingest that did not finish).
// Internal: a step splitcut runs itself; `splitcut query` does not offer it.
MERGE (m:Model {name: $name})
SET m.locked = true
REMOVE m.locked
RETURN CASE WHEN m.version IS NULL THEN null ELSE m.sha256 END AS sha256, m.version AS version
