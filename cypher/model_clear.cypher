// Remove a model's layers, blocks and partitions, keeping its (:Model) node (and its lock).
// $name: model name. Returns nothing.
MATCH (m:Model {name: $name})
CALL (m) { MATCH (m)-[:HAS_LAYER]->(l:Layer) DETACH DELETE l }
CALL (m) { MATCH (b:Block {model: m.name}) DETACH DELETE b }
CALL (m) { MATCH (p:Partition)-[:OF]->(m) DETACH DELETE p }
