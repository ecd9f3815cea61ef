// Block detection, step 5: block types shared across models, keyed by the segment key's hash.
// $rows: [{uid, signature, name, size}]. Returns nothing.
// Internal: a step splitcut runs itself; `splitcut query` does not offer it.
UNWIND $rows AS row
MERGE (t:BlockType {signature: row.signature})
  ON CREATE SET t.name = row.name, t.size = row.size
WITH row, t
MATCH (b:Block {uid: row.uid})
SET b.signature = row.signature, b.name = t.name  // the Browser's caption
MERGE (b)-[:OF_TYPE]->(t)
