// Which block types occur in which models, and how often.
// $model: a model name, or null for every model.
// Returns model, block_type (name), signature, size (layers per instance), instances.
MATCH (b:Block)-[:OF_TYPE]->(t:BlockType)
WHERE $model IS NULL OR b.model = $model
RETURN b.model AS model, t.name AS block_type, t.signature AS signature, t.size AS size,
       count(b) AS instances
ORDER BY model, instances DESC, block_type
