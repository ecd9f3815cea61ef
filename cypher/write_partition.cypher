// Write a partition back: labels :Device/:Server on the model's layers and blocks, replacing the
// old ones, and a (:Partition)-[:OF]->(:Model) node that becomes the current one.
// $model, $scenario (JSON text), $device (topological positions on the device), $total_ms,
// $device_compute_ms, $server_compute_ms, $crossing_ms, $cut_tensors, $method, $scenario_key,
// $baselines ({device_only_ms, server_only_ms, best_chain_split_ms, dads_repaired_ms}).
// Returns layers (count) and device (count).
MATCH (m:Model {name: $model}) WHERE m.version IS NOT NULL
SET m.partitioned_at = datetime()  // first: the model's write lock orders concurrent writers
WITH m
CALL (m) { MATCH (p:Partition)-[:OF]->(m) SET p.current = false }
CREATE (part:Partition {model: $model, scenario: $scenario, total_ms: $total_ms,
        device_compute_ms: $device_compute_ms, server_compute_ms: $server_compute_ms,
        crossing_ms: $crossing_ms, cut_tensors: $cut_tensors, method: $method,
        scenario_key: $scenario_key, device_layers: size($device), current: true,
        written_at: datetime()})-[:OF]->(m)
SET part += $baselines
WITH m, part
MATCH (l:Layer {model: m.name, version: m.version})
REMOVE l:Device:Server
WITH m, part, l, l.topo IN $device AS on_device
CALL (l, on_device) { WITH l WHERE on_device SET l:Device }
CALL (l, on_device) { WITH l WHERE NOT on_device SET l:Server }
WITH m, part, count(l) AS layers, sum(CASE WHEN on_device THEN 1 ELSE 0 END) AS device
CALL (m) {
  MATCH (b:Block {model: m.name, version: m.version})-[:CONTAINS]->(l:Layer)
  WITH b, all(x IN collect(l) WHERE x:Device) AS all_device,
       all(x IN collect(l) WHERE x:Server) AS all_server
  REMOVE b:Device:Server
  WITH b, all_device, all_server
  CALL (b, all_device) { WITH b WHERE all_device SET b:Device }
  CALL (b, all_server) { WITH b WHERE all_server SET b:Server }
}
CALL (m, part) {
  MATCH (b:Block {model: m.name, version: m.version})
  OPTIONAL MATCH (b)-[:CONTAINS]->(d:Layer:Device)
  WITH part, count(DISTINCT b) AS blocks, max(CASE WHEN d IS NULL THEN null ELSE b.index END) AS cut
  SET part.blocks = blocks, part.cut_block = cut
}
RETURN layers, device
