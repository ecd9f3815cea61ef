// Block detection, step 2: one batch of (:Block) nodes for the segments of step 1, each
// (:Block)-[:CONTAINS]->(:Layer) its layers, linked (:Block)-[:NEXT]->(:Block) in order, and
// each block's canonical segment key (toolkit.blocks.segment_key): 'C'/'O', then per layer in
// order `[key](sources)`, sources in input order as `<position in block>.<tensor_key>`,
// `e.<tensor_key>` (from the entry) or `o.<tensor_key>` (from further back). The batch's
// layers and the edges into them are read once, in order, from the (model, version, topo)
// index. Batches are independent (several are written at once); detect_blocks_link then
// joins them.
// $model, $version; $blocks: [{uid, index, entry, exit, closed}] consecutive in index.
// Returns index and key of the batch's blocks, in order.
// A batch already stored (committed, its acknowledgement lost, the write retried) is not
// written again; its stored keys are returned.
// Internal: a step splitcut runs itself; `splitcut query` does not offer it.
CALL () {
  WITH $blocks[0].entry + 1 AS low, $blocks[-1].exit AS high
  WHERE NOT EXISTS { MATCH (:Block {model: $model, version: $version, index: $blocks[0].index}) }
  MATCH (l:Layer {model: $model, version: $version})
  WHERE l.topo >= low AND l.topo <= high
  CALL (l) {
    OPTIONAL MATCH (p)-[f:FEEDS]->(l)
    WITH p, f ORDER BY f.position
    RETURN collect(CASE WHEN f IS NOT NULL THEN [p.topo, f.tensor_key] END) AS sources
  }
  WITH low, l, sources ORDER BY l.topo
  WITH low, collect(l) AS layers, collect(sources) AS sources
  UNWIND $blocks AS row
  CREATE (b:Block {uid: row.uid, model: $model, version: $version, index: row.index,
                   entry: row.entry, exit: row.exit, closed: row.closed})
  WITH layers, sources, b, row, range(row.entry + 1 - low, row.exit - low) AS span
  CALL (layers, b, span) {
    UNWIND span AS i
    WITH b, layers[i] AS l
    CREATE (b)-[:CONTAINS]->(l)
  }
  SET b.key = CASE WHEN row.closed THEN 'C' ELSE 'O' END + reduce(key = '', i IN span |
        key + '[' + layers[i].key + '](' + reduce(s = '', x IN sources[i] |
          s + CASE WHEN s = '' THEN '' ELSE ',' END + CASE
            WHEN x[0] > row.entry THEN toString(x[0] - row.entry - 1) + '.' + x[1]
            WHEN x[0] = row.entry THEN 'e.' + x[1]
            ELSE 'o.' + x[1] END) + ')')
  WITH collect(b) AS blocks
  WHERE size(blocks) > 0  // (none when the batch was stored already)
  CALL (blocks) {
    UNWIND range(0, size(blocks) - 2) AS i
    WITH blocks[i] AS a, blocks[i + 1] AS c
    CREATE (a)-[:NEXT]->(c)
  }
  RETURN count(*) AS written
}
// (the bounds as variables: the index seek then takes both, where from $blocks it took one)
WITH $blocks[0].index AS first, $blocks[-1].index AS last
MATCH (b:Block {model: $model, version: $version})
WHERE first <= b.index <= last
RETURN b.index AS index, b.key AS key ORDER BY b.index
