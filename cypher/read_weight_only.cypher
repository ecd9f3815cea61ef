// The layers of a model that weights and constants alone make (block detection puts them on no
// input-to-output path; the block-wise solvers check that they may follow the layers reading
// them beyond a cut). $model: model name. Returns topo, in order.
// Internal: a step splitcut runs itself; `splitcut query` does not offer it.
MATCH (m:Model {name: $model}) WHERE m.version IS NOT NULL
MATCH (l:Layer {model: $model, version: m.version})
WHERE l.topo >= 0 AND l.weight_only
RETURN l.topo AS topo
ORDER BY topo
