// Block detection, step 3: one batch of (:Block)-[:CONTAINS]->(:Layer) edges.
// $model, $version; $rows: [{block (uid), topo}]. Returns contains (count).
// Internal: a step splitcut runs itself; `splitcut query` does not offer it.
UNWIND $rows AS row
MATCH (b:Block {uid: row.block})
MATCH (l:Layer {model: $model, version: $version, topo: row.topo})
CREATE (b)-[:CONTAINS]->(l)
RETURN count(*) AS contains
