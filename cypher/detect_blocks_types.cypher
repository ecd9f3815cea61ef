// Block detection, step 5: block types shared across models, keyed by the segment key's hash.
// $model, $version; $rows: [{index, signature, name, size}]. Returns nothing.
// Internal: a step splitcut runs itself; `splitcut query` does not offer it.
// Each block keeps its own model's name for its type (the Browser's caption); a new type is
// named after it, and `name_block_types` names a shared one once the model's blocks are in.
UNWIND $rows AS row
MERGE (t:BlockType {signature: row.signature})
  ON CREATE SET t.name = row.name, t.names = [row.name], t.size = row.size
WITH row, t
MATCH (b:Block {model: $model, version: $version, index: row.index})
SET b.signature = row.signature, b.name = row.name
MERGE (b)-[:OF_TYPE]->(t)
