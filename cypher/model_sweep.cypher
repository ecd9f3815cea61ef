// Delete one batch of a model's layers, or once none is left, of its blocks, that are not
// current: versions before $before (superseded, or abandoned by an ingest that did not finish)
// and exactly $version (a staged version that lost). Readers never see these. Layers go first,
// taking their edges (to blocks too) with them, so no batch deletes more than about $batch
// nodes' worth of relationships. Run until it returns 0. Both are found through the
// (model, version, ...) indexes, never by scanning every layer of the database; layers and
// blocks stored before versions existed (no version) go last, found from the model's
// HAS_LAYER edges where it has more of them than its current version's layers.
// $model, $before (a version; null: none), $version (null: none), $batch (nodes per call).
// Returns deleted (count) and signatures (the types of the blocks deleted: name_block_types).
// Internal: a step splitcut runs itself; `splitcut query` does not offer it.
CALL () {
  CALL () {
    MATCH (l:Layer {model: $model}) WHERE l.version < $before AND l.topo >= 0
    RETURN l
    UNION
    MATCH (l:Layer {model: $model, version: $version}) WHERE l.topo >= 0
    RETURN l
  }
  WITH l LIMIT $batch
  DETACH DELETE l
  RETURN count(*) AS layers
}
CALL (layers) {
  WITH layers WHERE layers = 0
  CALL () {
    MATCH (b:Block {model: $model}) WHERE b.version < $before AND b.index >= 0
    RETURN b
    UNION
    MATCH (b:Block {model: $model, version: $version}) WHERE b.index >= 0
    RETURN b
  }
  WITH b LIMIT $batch
  WITH collect(b) AS doomed, collect(DISTINCT b.signature) AS signatures
  FOREACH (b IN doomed | DETACH DELETE b)
  RETURN size(doomed) AS blocks, signatures
}
CALL (layers, blocks) {
  WITH layers, blocks WHERE layers + blocks = 0
  MATCH (m:Model {name: $model})
  // only where the model has more layers than its current version's: the count is the node's
  // degree, read without a scan, so a model with none left is not read layer by layer
  WHERE COUNT { (m)-[:HAS_LAYER]->() } > coalesce(m.layer_count, 0)
  MATCH (m)-[:HAS_LAYER]->(l:Layer) WHERE l.version IS NULL
  WITH l LIMIT $batch
  OPTIONAL MATCH (b:Block)-[:CONTAINS]->(l) WHERE b.version IS NULL
  DETACH DELETE b, l
  RETURN count(DISTINCT l) AS unversioned
}
RETURN layers + blocks + unversioned AS deleted, signatures
