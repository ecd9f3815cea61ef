// Block detection, step 3: the (:Block)-[:NEXT]->(:Block) edges between the batches of step 2,
// each from the last block of a batch to the first of the next.
// $model, $version; $firsts: the index of each batch's first block but the first batch's.
// Returns links (count of edges created).
// A link already stored (a retried write whose commit went through) is not written again.
// Internal: a step splitcut runs itself; `splitcut query` does not offer it.
UNWIND $firsts AS i
MATCH (a:Block {model: $model, version: $version, index: i - 1})
MATCH (c:Block {model: $model, version: $version, index: i})
WHERE NOT EXISTS { MATCH (a)-[:NEXT]->(c) }
CREATE (a)-[:NEXT]->(c)
RETURN count(*) AS links
