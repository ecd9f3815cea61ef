// Families that share a block type but whose optimal cuts fall at different depths: pairs of
// families with a common multi-layer block type, and the mean cut depth (0..1, as
// cut_positions gives it) of each family's models under one scenario.
// $scenario_key: as `splitcut partition --neo4j` wrote it, or null for each model's current
// partition; $min_gap: the least difference in mean depth to report (e.g. 0.25).
// Returns block_type, signature, family_a, family_b, depth_a, depth_b, gap, models_a, models_b.
// Answers: Families that share a block type but differ in where the optimal cut falls.
CALL () {  // the scenario's partitions by index (or every current one)
  MATCH (p:Partition {scenario_key: $scenario_key}) RETURN p
  UNION
  MATCH (p:Partition {current: true}) WHERE $scenario_key IS NULL RETURN p
}
MATCH (p)-[:OF]->(m:Model)
WHERE p.depth IS NOT NULL  // (partitions written before splitcut stored depths have none)
WITH m, p ORDER BY p.written_at DESC
WITH m, collect(p)[0] AS p
WITH coalesce(m.family, m.name) AS family, collect(m) AS models, avg(p.depth) AS depth
UNWIND models AS m
MATCH (b:Block {model: m.name, version: m.version})-[:OF_TYPE]->(t:BlockType)
USING INDEX b:Block(model, version, index)  // from the models' blocks, not every type
WHERE b.index IS NOT NULL AND t.size > 1
WITH DISTINCT t, family, depth, size(models) AS model_count
WITH t, collect({family: family, depth: depth, models: model_count}) AS fams
UNWIND fams AS a
UNWIND fams AS b
WITH t, a, b WHERE a.family < b.family AND abs(a.depth - b.depth) >= $min_gap
RETURN t.name AS block_type, t.signature AS signature, a.family AS family_a,
       b.family AS family_b, a.depth AS depth_a, b.depth AS depth_b,
       abs(a.depth - b.depth) AS gap, a.models AS models_a, b.models AS models_b
ORDER BY gap DESC, block_type, family_a, family_b
