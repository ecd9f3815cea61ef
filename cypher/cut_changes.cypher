// Models whose optimal cut changes inside a range of a swept parameter (as `splitcut sweep
// --neo4j` stored their policies): e.g. which models change their cut between 10 and 100
// Mbit/s. A policy counts when two or more of its intervals overlap [$low, $high].
// $low, $high: the range, in the policy's unit (bit/s for rates, samples for the batch);
// $parameter: 'uplink', 'downlink', 'rate', 'batch', or null for any.
// Returns model, parameter, scenario_key, changes (breakpoints inside the range), breakpoints,
// device_layers and intervals ([from, to]) of the intervals overlapping the range, in order.
// Answers: Models whose optimal cut changes between two link rates (from sweeps).
MATCH (policy:Policy)-[:OF]->(m:Model)
WHERE $parameter IS NULL OR policy.parameter = $parameter
MATCH (p:Partition)-[:IN]->(policy)
WHERE p.to > $low AND p.from < $high
WITH m, policy, p ORDER BY p.index
WITH m, policy, collect(p) AS inside
WHERE size(inside) > 1
RETURN m.name AS model, policy.parameter AS parameter, policy.scenario_key AS scenario_key,
       size(inside) - 1 AS changes, [p IN tail(inside) | p.from] AS breakpoints,
       [p IN inside | p.device_layers] AS device_layers,
       [p IN inside | [p.from, p.to]] AS intervals
ORDER BY model, parameter
