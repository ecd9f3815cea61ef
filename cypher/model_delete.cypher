// Remove a model with its layers, blocks and partitions (block types stay: other models share them).
// $name: model name. Returns nothing.
MATCH (m:Model {name: $name})
CALL (m) { MATCH (m)-[:HAS_LAYER]->(l:Layer) DETACH DELETE l }
CALL (m) { MATCH (b:Block {model: m.name}) DETACH DELETE b }
CALL (m) { MATCH (p:Partition)-[:OF]->(m) DETACH DELETE p }
DETACH DELETE m
