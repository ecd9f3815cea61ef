// The block types that cost most on a device across the whole corpus: forward + backward
// delay of one batch, summed over every instance in every model whose stored delays are for
// that device (costliest_block_types gives the same per model).
// $device: device profile name (e.g. 'jetson-nano'); $limit: how many rows.
// Returns block_type, signature, models, families, instances, device_ms_total.
// Answers: The block types with the largest summed training delay on a device, corpus-wide.
MATCH (m:Model {device: $device})
MATCH (b:Block {model: m.name, version: m.version})-[:OF_TYPE]->(t:BlockType)
WHERE b.index >= 0  // (the (model, version, index) index needs all three)
MATCH (b)-[:CONTAINS]->(l:Layer)
WITH t, m, b, sum(l.device_ms) AS block_ms
WITH t, collect(DISTINCT m.name) AS models,
     collect(DISTINCT coalesce(m.family, m.name)) AS families, count(b) AS instances,
     sum(block_ms) AS total
RETURN t.name AS block_type, t.signature AS signature, size(models) AS models, families,
       instances, total AS device_ms_total
ORDER BY device_ms_total DESC
LIMIT $limit
