// Block types that occur in several models: the same structure (ops, shapes, wiring) reused.
// $min_models: the least number of models a type must occur in (2 for "shared").
// Returns block_type, signature, size, models (names), model_count, instances.
// Answers: Block types that recur across models.
MATCH (m:Model) WHERE m.version IS NOT NULL
MATCH (b:Block {model: m.name, version: m.version})-[:OF_TYPE]->(t:BlockType)
WHERE b.index >= 0  // (the (model, version, index) index needs all three)
WITH t, collect(DISTINCT b.model) AS models, count(b) AS instances
WHERE size(models) >= $min_models
RETURN t.name AS block_type, t.signature AS signature, t.size AS size, models,
       size(models) AS model_count, instances
ORDER BY model_count DESC, instances DESC, block_type
