// Take a model's write lock for the rest of the transaction, creating its (:Model) node if new,
// so that concurrent writers of one model run one after the other (MERGE on the unique name
// waits for a concurrent creator to commit instead of failing).
// $name: model name. Returns sha256 (null for a model not ingested before).
MERGE (m:Model {name: $name})
SET m.locked = true
REMOVE m.locked
RETURN m.sha256 AS sha256
