// Delete one batch of a model's layers, or once none is left, of its blocks, that are not
// current: versions before $before (superseded, or abandoned by an ingest that did not finish)
// and exactly $version (a staged version that lost). Readers never see these. Layers go first,
// taking their edges (to blocks too) with them, so no batch deletes more than about $batch
// nodes' worth of relationships. Run until it returns 0.
// $model, $before (a version; null: none), $version (null: none), $batch (nodes per call).
// Returns deleted (count).
// Internal: a step splitcut runs itself; `splitcut query` does not offer it.
CALL () {
  MATCH (l:Layer {model: $model})
  WHERE l.version IS NULL OR l.version < $before OR l.version = $version
  WITH l LIMIT $batch
  DETACH DELETE l
  RETURN count(*) AS layers
}
CALL (layers) {
  WITH layers WHERE layers = 0
  MATCH (b:Block {model: $model})
  WHERE b.version IS NULL OR b.version < $before OR b.version = $version
  WITH b LIMIT $batch
  DETACH DELETE b
  RETURN count(*) AS blocks
}
RETURN layers + blocks AS deleted
