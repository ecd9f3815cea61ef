// Before detecting a version's blocks again: delete the ones it has.
// $model, $version. Returns nothing.
// Internal: a step splitcut runs itself; `splitcut query` does not offer it.
MATCH (b:Block {model: $model, version: $version}) WHERE b.index >= 0  // (by the index)
DETACH DELETE b
