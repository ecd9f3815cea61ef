// Before detecting a version's blocks again: delete the ones it has.
// $model, $version. Returns nothing.
MATCH (b:Block {model: $model, version: $version})
DETACH DELETE b
