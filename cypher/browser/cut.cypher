// The cut at a glance, for the Browser: the model's block chain (each block in its tier's
// colour; a block the cut runs through stays yellow), that block's layers and their edges, and
// every tensor that crosses a boundary as a thick red edge sized in MB per sample, with the
// blocks that hold its two ends. Paste after `:param model => 'resnet18'`.
// $model: the model's name.
MATCH (m:Model {name: $model})
MATCH (b:Block {model: m.name, version: m.version})
OPTIONAL MATCH (b)-[next:NEXT]->(:Block)
WITH m, collect(DISTINCT b) AS blocks, collect(DISTINCT next) AS chain
OPTIONAL MATCH (mixed:Block {model: m.name, version: m.version})-[:CONTAINS]->(inner:Layer)
  WHERE mixed.tier IS NULL
OPTIONAL MATCH (inner)-[feeds:FEEDS]->(:Layer)<-[:CONTAINS]-(mixed)
WITH m, blocks, chain, collect(DISTINCT inner) AS inside, collect(DISTINCT feeds) AS edges
OPTIONAL MATCH (a:Layer {model: m.name, version: m.version})-[cross:CROSSES]->(z:Layer)
OPTIONAL MATCH (holder:Block {model: m.name, version: m.version})-[held:CONTAINS]->(end:Layer)
  WHERE end = a OR end = z
RETURN blocks, chain, inside, edges, collect(DISTINCT cross) AS crossing,
       collect(DISTINCT a) + collect(DISTINCT z) AS ends, collect(DISTINCT held) AS holders
