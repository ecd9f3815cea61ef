// Where the optimal cut falls in each model for a scenario: the block holding the last device
// layer, how deep the cut is (the last device layer's place in topological order, 0..1), what
// crosses, and the gain over the baselines.
// $scenario_key: as `splitcut partition --neo4j` wrote it (e.g. 'jetson-nano+rtx-3090 200M/400M
// 3ms b32 fp32'), or null for each model's current partition.
// Returns model, scenario_key, cut_block, block_type, blocks, depth (0..1), cut_tensors,
// total_ms, gain_vs_device_only, gain_vs_best_chain_split (fractions of the baseline).
// Answers: Where each model's optimal cut falls, how deep, and what it gains.
MATCH (p:Partition)-[:OF]->(m:Model)
WHERE ($scenario_key IS NULL AND p.current) OR p.scenario_key = $scenario_key
WITH m, p ORDER BY p.written_at DESC
WITH m, collect(p)[0] AS p
OPTIONAL MATCH (b:Block {model: m.name, version: m.version, index: p.cut_block})-[:OF_TYPE]->(t:BlockType)
RETURN m.name AS model, p.scenario_key AS scenario_key, p.cut_block AS cut_block,
       coalesce(b.name, t.name) AS block_type, p.blocks AS blocks,
       p.depth AS depth,
       p.cut_tensors AS cut_tensors, p.total_ms AS total_ms,
       1.0 - p.total_ms / p.device_only_ms AS gain_vs_device_only,
       1.0 - p.total_ms / p.best_chain_split_ms AS gain_vs_best_chain_split
ORDER BY model
