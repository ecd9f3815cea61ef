// Write a partition back: on each of the model's layers its tier's label (:Device/:Server, or a
// chain's own tier names such as :Edge, :Cloud) and `tier` index, replacing the labels any
// earlier partition wrote (the model keeps their names in `tier_labels`); on each block whose
// layers share one tier, that label and index; a (:Layer)-[:CROSSES {tensor, bytes, size}]->
// (:Layer) beside each FEEDS edge whose ends are on different tiers (the earlier partition's
// removed); and a (:Partition)-[:OF]->(:Model) node that becomes the current one. Labels are parameters ($labels), never spliced into the text.
// $model, $scenario (JSON text), $tiers (tier names in chain order), $labels (a label per tier),
// $tier_of (each layer's tier by topological position), $total_ms, $compute_ms (per tier),
// $device_compute_ms (the first tier), $server_compute_ms (the others), $crossing_ms,
// $cut_tensors (the first boundary's), $method, $scenario_key,
// $baselines ({device_only_ms, ...}). Returns layers (count) and device (count on tier 0).
// Internal: a step splitcut runs itself; `splitcut query` does not offer it.
MATCH (m:Model {name: $model}) WHERE m.version IS NOT NULL
SET m.partitioned_at = datetime()  // first: the model's write lock orders concurrent writers
WITH m, reduce(seen = [], x IN coalesce(m.tier_labels, []) + ['Device', 'Server'] + $labels |
               CASE WHEN x IN seen THEN seen ELSE seen + x END) AS old
SET m.tier_labels = old
WITH m, old
CALL (m) { MATCH (p:Partition)-[:OF]->(m) SET p.current = false }
CREATE (part:Partition {model: $model, scenario: $scenario, total_ms: $total_ms,
        tiers: $tiers, tier_compute_ms: $compute_ms,
        device_compute_ms: $device_compute_ms, server_compute_ms: $server_compute_ms,
        crossing_ms: $crossing_ms, cut_tensors: $cut_tensors, method: $method,
        scenario_key: $scenario_key, current: true, written_at: datetime()})-[:OF]->(m)
SET part += $baselines
WITH m, part, old
MATCH (l:Layer {model: m.name, version: m.version}) WHERE l.topo >= 0  // (by the index)
REMOVE l:$(old)
SET l.tier = $tier_of[l.topo]
SET l:$($labels[l.tier])
WITH m, part, old, count(l) AS layers, sum(CASE WHEN l.tier = 0 THEN 1 ELSE 0 END) AS device
SET part.device_layers = device
WITH m, part, old, layers, device
CALL (m, old) {
  MATCH (b:Block {model: m.name, version: m.version})-[:CONTAINS]->(l:Layer)
  WHERE b.index >= 0
  WITH b, collect(DISTINCT l.tier) AS tiers
  OPTIONAL MATCH (b)-[:OF_TYPE]->(t:BlockType)
  SET b.name = coalesce(b.name, t.name)  // the Browser's caption (blocks stored before it)
  REMOVE b:$(old)
  SET b.tier = CASE WHEN size(tiers) = 1 THEN tiers[0] END
  WITH b, tiers WHERE size(tiers) = 1
  SET b:$($labels[tiers[0]])
}
CALL (m) {  // what crosses a boundary, drawn thick in the Browser: (:Layer)-[:CROSSES]->(:Layer)
  MATCH (x:Layer {model: m.name, version: m.version})-[old_cross:CROSSES]->() WHERE x.topo >= 0
  DELETE old_cross
}
CALL (m) {
  MATCH (a:Layer {model: m.name, version: m.version})-[f:FEEDS]->(z:Layer)
  WHERE a.topo >= 0 AND a.tier <> z.tier
  CREATE (a)-[:CROSSES {tensor: f.tensor, bytes: f.bytes,
                        size: toString(round(f.bytes / 1.0e6, 3)) + ' MB'}]->(z)
}
CALL (m, part) {
  MATCH (b:Block {model: m.name, version: m.version}) WHERE b.index >= 0
  OPTIONAL MATCH (b)-[:CONTAINS]->(d:Layer {tier: 0})
  WITH part, count(DISTINCT b) AS blocks, max(CASE WHEN d IS NULL THEN null ELSE b.index END) AS cut
  SET part.blocks = blocks, part.cut_block = cut
}
CALL (m, part) {  // how deep the cut is: the last device layer's place in topological order
  MATCH (l:Layer {model: m.name, version: m.version, tier: 0}) WHERE l.topo >= 0
  WITH part, max(l.topo) AS last
  SET part.depth = toFloat(coalesce(last, -1) + 1) / m.layer_count
}
RETURN layers, device
