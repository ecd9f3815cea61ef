// Models whose optimal cut moves between two scenarios (latest partition written for each).
// $a, $b: scenario keys as written by `splitcut partition --neo4j`.
// Returns model, device_layers_a, device_layers_b, cut_block_a, cut_block_b, total_ms_a,
// total_ms_b.
// Answers: Models whose optimal cut moves between two scenarios.
MATCH (pa:Partition {scenario_key: $a})-[:OF]->(m:Model)<-[:OF]-(pb:Partition {scenario_key: $b})
WITH m, pa, pb ORDER BY pa.written_at DESC, pb.written_at DESC
WITH m, collect(pa)[0] AS pa, collect(pb)[0] AS pb
WHERE pa.device_layers <> pb.device_layers
RETURN m.name AS model, pa.device_layers AS device_layers_a, pb.device_layers AS device_layers_b,
       pa.cut_block AS cut_block_a, pb.cut_block AS cut_block_b, pa.total_ms AS total_ms_a,
       pb.total_ms AS total_ms_b
ORDER BY model
