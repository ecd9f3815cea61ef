// The block types that cost most on a device: forward + backward delay of one batch, summed
// over every instance, for the models whose stored delays are for that device.
// $device: device profile name (e.g. 'jetson-nano'); $limit: how many rows.
// Returns model, block_type, signature, instances, device_ms_each, device_ms_total.
// Answers: The block types with the largest summed training delay on a device.
MATCH (m:Model {device: $device})
MATCH (b:Block {model: m.name, version: m.version})-[:OF_TYPE]->(t:BlockType)
WHERE b.index >= 0  // (the (model, version, index) index needs all three)
MATCH (b)-[:CONTAINS]->(l:Layer)
WITH m, t, b, sum(l.device_ms) AS block_ms
WITH m, t, count(b) AS instances, max(block_ms) AS each, sum(block_ms) AS total,
     head(collect(coalesce(b.name, t.name))) AS name  // the model's own name for the type
RETURN m.name AS model, name AS block_type, t.signature AS signature, instances,
       each AS device_ms_each, total AS device_ms_total
ORDER BY device_ms_total DESC
LIMIT $limit
