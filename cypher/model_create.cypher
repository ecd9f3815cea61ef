// Create the (:Model) node of a model about to be ingested.
// $name, $sha256, $source, $opset, $layer_count, $scenario (JSON text of the delays' scenario),
// $device, $server (the profiles those delays are for).
CREATE (m:Model {name: $name, sha256: $sha256, source: $source, opset: $opset,
                 layer_count: $layer_count, scenario: $scenario, device: $device,
                 server: $server, ingested_at: datetime()})
