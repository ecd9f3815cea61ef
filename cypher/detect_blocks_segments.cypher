// Block detection, step 1: cut vertices and segments of a version of a model (read only).
// A layer is a cut vertex iff no FEEDS edge jumps over its topological position (a virtual
// input feeds every layer that reads a model input and every layer no layer on the path feeds;
// every layer that feeds nothing feeds a virtual output).
// Layers weights alone make (weight_only) are on no input-to-output path: the virtual input does
// not feed them and they are never cut vertices (toolkit/blocks.py says why).
// A segment runs from after one cut vertex to the next, inclusive; the tail after the last cut
// vertex is an open segment.
// $model, $version, $layer_count; $read_input: the topological positions of the layers that
// read a model input (the store keeps no node for an input). Returns cut_vertices (topological positions) and segments
// ([{entry, exit, closed}] in order; entry -1 for the first).
// Internal: a step splitcut runs itself; `splitcut query` does not offer it.
MATCH (l:Layer {model: $model, version: $version}) WHERE l.topo >= 0
CALL (l) {
  OPTIONAL MATCH (l)-[:FEEDS]->(s)
  RETURN max(s.topo) AS far
}
WITH l.topo AS topo, coalesce(far, $layer_count) AS far,
     EXISTS { (l)<-[:FEEDS]-(p) WHERE p.weight_only IS NULL } AND NOT l.topo IN $read_input
       AS fed,
     coalesce(l.weight_only, false) AS off
ORDER BY topo
WITH collect({topo: topo, far: far, fed: fed, off: off}) AS rows
WITH rows,
     reduce(r = 0, x IN rows |
       CASE WHEN NOT x.fed AND NOT x.off AND x.topo > r THEN x.topo ELSE r END) AS start
// the running reach, 1,000 layers at a time: appending to a short list per chunk keeps the
// scan linear (one list of all cuts would be copied at each append)
WITH reduce(acc = {reach: start, parts: []}, k IN range(0, size(rows) / 1000) |
       [chunk IN [reduce(c = {reach: acc.reach, cuts: []}, x IN rows[k * 1000 .. k * 1000 + 1000] |
          {reach: CASE WHEN x.far > c.reach THEN x.far ELSE c.reach END,
           cuts: CASE WHEN c.reach <= x.topo AND NOT x.off THEN c.cuts + [x.topo]
                      ELSE c.cuts END})] |
        {reach: chunk.reach, parts: acc.parts + [chunk.cuts]}][0]
     ).parts AS parts
CALL (parts) {
  UNWIND parts AS part
  UNWIND part AS cut
  RETURN collect(cut) AS cuts
}
RETURN cuts AS cut_vertices,
       [i IN range(0, size(cuts) - 1) |
          {entry: CASE WHEN i = 0 THEN -1 ELSE cuts[i - 1] END, exit: cuts[i], closed: true}]
       + CASE WHEN size(cuts) = 0 OR last(cuts) < $layer_count - 1
              THEN [{entry: coalesce(last(cuts), -1), exit: $layer_count - 1, closed: false}]
              ELSE [] END AS segments
