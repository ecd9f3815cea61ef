// A model's compressed chain: blocks in order with their span and type.
// $model: model name. Returns index, entry, exit, closed, signature, name, size.
// Answers: One model's compressed chain: its blocks in order, with span and type.
MATCH (m:Model {name: $model}) WHERE m.version IS NOT NULL
MATCH (b:Block {model: $model, version: m.version})-[:OF_TYPE]->(t:BlockType)
WHERE b.index >= 0  // (the (model, version, index) index needs all three)
RETURN b.index AS index, b.entry AS entry, b.exit AS exit, b.closed AS closed,
       b.signature AS signature, coalesce(b.name, t.name) AS name, t.size AS size
ORDER BY b.index
