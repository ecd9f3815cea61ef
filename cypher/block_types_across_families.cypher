// Block types that recur across architecture families: the same block (ops, shapes, wiring)
// in models of different families (`splitcut ingest --zoo` stores each model's family; a
// model without one counts as its own family).
// $min_families: the least number of families a type must occur in (2 for "across");
// $min_size: the least number of layers in it (1 for all, 2 to leave lone layers out).
// Returns block_type, signature, size, families, family_count, models (count), instances.
// Answers: Block types that recur across architecture families.
MATCH (m:Model) WHERE m.version IS NOT NULL
MATCH (b:Block {model: m.name, version: m.version})-[:OF_TYPE]->(t:BlockType)
WHERE b.index >= 0 AND t.size >= $min_size
WITH t, coalesce(m.family, m.name) AS family, m.name AS model, count(b) AS instances
WITH t, collect(DISTINCT family) AS families, count(DISTINCT model) AS models,
     sum(instances) AS instances
WHERE size(families) >= $min_families
RETURN t.name AS block_type, t.signature AS signature, t.size AS size, families,
       size(families) AS family_count, models, instances
ORDER BY family_count DESC, size DESC, instances DESC, block_type
