// A model's architecture family (e.g. 'resnet'), set on a model ingested unchanged.
// $name: model name; $family: the family. Returns nothing.
// Internal: a step splitcut runs itself; `splitcut query` does not offer it.
MATCH (m:Model {name: $name})
SET m.family = $family
