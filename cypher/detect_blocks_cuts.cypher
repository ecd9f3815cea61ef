// Block detection, step 1: the cut vertices of one range of a version's topological positions
// (read only). Ranges are independent, so several are scanned at once; Store._detect_blocks
// joins them (a running maximum carried from range to range) and makes the segments.
// A layer is a cut vertex iff no FEEDS edge jumps over its topological position (a virtual
// input feeds every layer that reads a model input and every layer no layer on the path feeds;
// every layer that feeds nothing feeds a virtual output).
// Layers weights alone make (weight_only) are on no input-to-output path: the virtual input does
// not feed them and they are never cut vertices (toolkit/blocks.py says why).
// $model, $version; $low, $high: the range [low, high); $layer_count; $read_input: the
// topological positions of the layers that read a model input (the store keeps no node for an
// input).
// Returns one row: input_reach (the last position in the range the virtual input feeds, -1 if
// none), reach (the furthest position an edge from the range goes to, -1 if none; a layer that
// feeds nothing reaches $layer_count) and candidates: [[position, reach before it]] for the
// on-path layers no edge from earlier in the range jumps over, in order (reach before it: the
// furthest such an edge goes, -1 if none). A candidate is a cut vertex iff neither the virtual
// input nor an edge from an earlier range goes beyond it either.
// Internal: a step splitcut runs itself; `splitcut query` does not offer it.
MATCH (l:Layer {model: $model, version: $version}) WHERE $low <= l.topo < $high
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
     reduce(r = -1, x IN rows |
       CASE WHEN NOT x.fed AND NOT x.off AND x.topo > r THEN x.topo ELSE r END) AS input_reach
// the running reach, 1,000 layers at a time: appending to a short list per chunk keeps the
// scan linear (one list of all candidates would be copied at each append)
WITH input_reach, reduce(acc = {reach: -1, parts: []}, k IN range(0, size(rows) / 1000) |
       [chunk IN [reduce(c = {reach: acc.reach, found: []}, x IN rows[k * 1000 .. k * 1000 + 1000] |
          {reach: CASE WHEN x.far > c.reach THEN x.far ELSE c.reach END,
           found: CASE WHEN c.reach <= x.topo AND NOT x.off THEN c.found + [[x.topo, c.reach]]
                       ELSE c.found END})] |
        {reach: chunk.reach, parts: acc.parts + [chunk.found]}][0]
     ) AS scan
CALL (scan) {
  UNWIND scan.parts AS part
  UNWIND part AS candidate
  RETURN collect(candidate) AS candidates
}
RETURN input_reach, scan.reach AS reach, candidates
