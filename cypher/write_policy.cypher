// Write a sweep's policy (`splitcut sweep --neo4j`): a (:Policy)-[:OF]->(:Model) node for the
// swept parameter and scenario, and one (:Partition)-[:IN]->(:Policy) per interval of the
// parameter on which one partition is optimal, replacing the policy an earlier sweep of the
// same parameter and scenario wrote. The layers' labels stay those of the current partition.
// $model, $parameter ('uplink', 'downlink', 'rate', 'batch'), $unit ('bit/s', 'samples'),
// $scenario (JSON text), $scenario_key, $tiers (tier names in chain order), $pieces (a list of
// {from, to, delay_from_ms, delay_to_ms, tier_of (each layer's tier by topological position),
// layers_per_tier, cut_tensors}). Returns partitions (count written).
// Internal: a step splitcut runs itself; `splitcut query` does not offer it.
MATCH (m:Model {name: $model}) WHERE m.version IS NOT NULL
SET m.partitioned_at = datetime()  // first: the model's write lock orders concurrent writers
WITH m
CALL (m) {
  MATCH (old:Policy {parameter: $parameter, scenario_key: $scenario_key})-[:OF]->(m)
  CALL (old) { MATCH (p:Partition)-[:IN]->(old) DETACH DELETE p }
  DETACH DELETE old
}
CREATE (policy:Policy {model: $model, parameter: $parameter, unit: $unit, scenario: $scenario,
        scenario_key: $scenario_key, tiers: $tiers, intervals: size($pieces),
        from: $pieces[0].from, to: $pieces[-1].to, written_at: datetime()})-[:OF]->(m)
WITH policy
UNWIND range(0, size($pieces) - 1) AS i
WITH policy, i, $pieces[i] AS piece
CREATE (p:Partition {model: $model, parameter: $parameter, index: i, from: piece.from,
        to: piece.to, delay_from_ms: piece.delay_from_ms, delay_to_ms: piece.delay_to_ms,
        tier_of: piece.tier_of, layers_per_tier: piece.layers_per_tier,
        device_layers: piece.layers_per_tier[0], cut_tensors: piece.cut_tensors,
        tiers: $tiers, scenario_key: $scenario_key, current: false})-[:IN]->(policy)
RETURN count(p) AS partitions
