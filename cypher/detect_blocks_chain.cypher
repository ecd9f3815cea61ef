// Block detection, step 2: the compressed chain, (:Block)-[:NEXT]->(:Block) in order.
// $model: model name. Returns links (count).
MATCH (b:Block {model: $model})
WITH b ORDER BY b.index
WITH collect(b) AS blocks
UNWIND range(0, size(blocks) - 2) AS i
WITH blocks[i] AS a, blocks[i + 1] AS c
CREATE (a)-[:NEXT]->(c)
RETURN count(*) AS links
