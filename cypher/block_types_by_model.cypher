// Which block types occur in which models, and how often.
// $model: a model name, or null for every model.
// Returns model, block_type (the model's own name for it), signature, size (layers per
// instance), instances.
// Answers: Which block types each model has, and how many of each.
MATCH (m:Model) WHERE m.version IS NOT NULL AND ($model IS NULL OR m.name = $model)
MATCH (b:Block {model: m.name, version: m.version})-[:OF_TYPE]->(t:BlockType)
WHERE b.index >= 0  // (the (model, version, index) index needs all three)
RETURN b.model AS model, coalesce(b.name, t.name) AS block_type, t.signature AS signature,
       t.size AS size,
       count(b) AS instances
ORDER BY model, instances DESC, block_type
