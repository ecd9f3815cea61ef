// Describe a model about to be ingested (its node exists and is locked: model_lock).
// $name, $sha256, $source, $opset, $layer_count, $scenario (JSON text of the delays' scenario),
// $device, $server (the profiles those delays are for).
MATCH (m:Model {name: $name})
SET m += {sha256: $sha256, source: $source, opset: $opset, layer_count: $layer_count,
          scenario: $scenario, device: $device, server: $server},
    m.ingested_at = datetime()
