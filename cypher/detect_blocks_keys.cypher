// Block detection, step 4: each block's canonical segment key (toolkit.blocks.segment_key):
// 'C'/'O', then per layer in order `[key](sources)`, sources in input order as
// `<position in block>.<tensor_key>`, `e.<tensor_key>` (from the entry) or `o.<tensor_key>`.
// $model, $version, $first, $last (a range of block indexes). Returns uid and key of those
// blocks, in order.
// Internal: a step splitcut runs itself; `splitcut query` does not offer it.
MATCH (b:Block {model: $model, version: $version}) WHERE $first <= b.index <= $last
MATCH (b)-[:CONTAINS]->(l)
OPTIONAL MATCH (p)-[f:FEEDS]->(l)
WITH b, l, p, f ORDER BY l.topo, f.position
WITH b, l, collect(CASE
       WHEN f IS NULL THEN null
       WHEN p.topo > b.entry THEN toString(p.topo - b.entry - 1) + '.' + f.tensor_key
       WHEN p.topo = b.entry THEN 'e.' + f.tensor_key
       ELSE 'o.' + f.tensor_key END) AS sources
WITH b, l, '[' + l.key + '](' +
     reduce(s = '', x IN sources | s + CASE WHEN s = '' THEN '' ELSE ',' END + x) + ')' AS part
ORDER BY b.index, l.topo
WITH b, collect(part) AS parts
SET b.key = CASE WHEN b.closed THEN 'C' ELSE 'O' END + reduce(s = '', x IN parts | s + x)
RETURN b.uid AS uid, b.key AS key ORDER BY b.index
