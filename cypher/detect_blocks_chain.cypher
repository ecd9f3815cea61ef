// Block detection, step 2: one batch of (:Block) nodes for the segments of step 1, each
// (:Block)-[:CONTAINS]->(:Layer) its layers (read once for the batch, in order, from the
// (model, version, topo) index), linked (:Block)-[:NEXT]->(:Block) in order. Batches are
// independent (several are written at once); detect_blocks_link then joins them.
// $model, $version; $blocks: [{uid, index, entry, exit, closed}] consecutive in index.
// Returns blocks (count).
// A batch already stored (committed, its acknowledgement lost, the write retried) is skipped.
// Internal: a step splitcut runs itself; `splitcut query` does not offer it.
WITH $blocks[0].entry + 1 AS low, $blocks[-1].exit AS high
WHERE NOT EXISTS { MATCH (:Block {uid: $blocks[0].uid}) }
MATCH (l:Layer {model: $model, version: $version})
WHERE l.topo >= low AND l.topo <= high
WITH low, l ORDER BY l.topo
WITH low, collect(l) AS layers
UNWIND $blocks AS row
CREATE (b:Block {uid: row.uid, model: $model, version: $version, index: row.index,
                 entry: row.entry, exit: row.exit, closed: row.closed})
WITH low, layers, b, row
CALL (low, layers, b, row) {
  UNWIND layers[row.entry + 1 - low .. row.exit + 1 - low] AS l
  CREATE (b)-[:CONTAINS]->(l)
}
WITH collect(b) AS blocks
WHERE size(blocks) > 0  // (none when the batch was stored already)
CALL (blocks) {
  UNWIND range(0, size(blocks) - 2) AS i
  WITH blocks[i] AS a, blocks[i + 1] AS c
  CREATE (a)-[:NEXT]->(c)
}
RETURN size(blocks) AS blocks
