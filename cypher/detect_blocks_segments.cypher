// Block detection, step 1: cut vertices and segments of a model, as (:Block) nodes.
// A layer is a cut vertex iff no FEEDS edge jumps over its topological position (a virtual
// input feeds every layer nothing feeds; every layer that feeds nothing feeds a virtual output).
// A segment runs from after one cut vertex to the next, inclusive; the tail after the last cut
// vertex is an open segment. Replaces the model's previous blocks.
// $model: model name. Returns cut_vertices (topological positions), blocks (count).
MATCH (m:Model {name: $model})
SET m.blocks_at = datetime()  // first: the model's write lock orders concurrent writers
WITH m
CALL (m) { MATCH (old:Block {model: m.name}) DETACH DELETE old }
MATCH (m)-[:HAS_LAYER]->(l:Layer)
OPTIONAL MATCH (l)-[:FEEDS]->(s:Layer)
WITH m, l, max(s.topo) AS far
OPTIONAL MATCH (:Layer)-[f:FEEDS]->(l)
WITH m, l.topo AS topo, coalesce(far, m.layer_count) AS far, count(f) > 0 AS fed
ORDER BY topo
WITH m, collect({topo: topo, far: far, fed: fed}) AS rows
WITH m, rows,
     reduce(r = 0, x IN rows | CASE WHEN NOT x.fed AND x.topo > r THEN x.topo ELSE r END) AS start
WITH m, reduce(acc = {reach: start, cuts: []}, x IN rows |
       {reach: CASE WHEN x.far > acc.reach THEN x.far ELSE acc.reach END,
        cuts: CASE WHEN acc.reach <= x.topo THEN acc.cuts + [x.topo] ELSE acc.cuts END}
     ).cuts AS cuts
WITH m, cuts,
     [i IN range(0, size(cuts) - 1) |
        {entry: CASE WHEN i = 0 THEN -1 ELSE cuts[i - 1] END, exit: cuts[i], closed: true}]
     + CASE WHEN size(cuts) = 0 OR last(cuts) < m.layer_count - 1
            THEN [{entry: coalesce(last(cuts), -1), exit: m.layer_count - 1, closed: false}]
            ELSE [] END AS segments
UNWIND range(0, size(segments) - 1) AS i
WITH m, cuts, size(segments) AS count, i, segments[i] AS seg
CREATE (b:Block {uid: m.name + '/block/' + toString(i), model: m.name, index: i,
                 entry: seg.entry, exit: seg.exit, closed: seg.closed})
WITH m, cuts, count, b
CALL (m, b) {
  MATCH (l:Layer {model: m.name}) WHERE l.topo > b.entry AND l.topo <= b.exit
  CREATE (b)-[:CONTAINS]->(l)
}
WITH cuts, count, collect(b) AS blocks
RETURN cuts AS cut_vertices, count AS blocks
