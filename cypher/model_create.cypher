// Create the (:Model) node of a model about to be ingested.
// $name, $sha256, $source, $opset, $layer_count, $scenario (JSON text of the costs' scenario).
CREATE (m:Model {name: $name, sha256: $sha256, source: $source, opset: $opset,
                 layer_count: $layer_count, scenario: $scenario, ingested_at: datetime()})
