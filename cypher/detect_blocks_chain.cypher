// Block detection, step 2: one batch of (:Block) nodes for the segments of step 1, linked
// (:Block)-[:NEXT]->(:Block) in order (to the previous batch's last block too).
// $model, $version; $blocks: [{uid, index, entry, exit, closed}] consecutive in index.
// Returns blocks (count).
// Internal: a step splitcut runs itself; `splitcut query` does not offer it.
UNWIND $blocks AS row
CREATE (b:Block {uid: row.uid, model: $model, version: $version, index: row.index,
                 entry: row.entry, exit: row.exit, closed: row.closed})
WITH collect(b) AS blocks
CALL (blocks) {
  OPTIONAL MATCH (before:Block {model: $model, version: $version, index: blocks[0].index - 1})
  WITH [x IN [before] WHERE x IS NOT NULL] + blocks AS chain
  UNWIND range(0, size(chain) - 2) AS i
  WITH chain[i] AS a, chain[i + 1] AS c
  CREATE (a)-[:NEXT]->(c)
}
RETURN size(blocks) AS blocks
