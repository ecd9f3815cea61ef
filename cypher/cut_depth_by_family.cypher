// How deep the optimal cut falls, family by family: the distribution over each family's
// models of the cut depth (the last device layer's place in topological order, 0..1, as
// cut_positions gives it: near 0 = only the input layers on the device, 1 = all of it).
// $scenario_key: as `splitcut partition --neo4j` wrote it, or null for each model's current
// partition.
// Returns family, models, depths (sorted), min_depth, median_depth, mean_depth, max_depth,
// device_only (models that train on the device alone).
// Answers: The distribution of cut depth in each architecture family.
CALL () {  // the scenario's partitions by index (or every current one)
  MATCH (p:Partition {scenario_key: $scenario_key}) RETURN p
  UNION
  MATCH (p:Partition {current: true}) WHERE $scenario_key IS NULL RETURN p
}
MATCH (p)-[:OF]->(m:Model)
WHERE p.depth IS NOT NULL  // (partitions written before splitcut stored depths have none)
WITH m, p ORDER BY p.written_at DESC
WITH m, collect(p)[0] AS p
WITH coalesce(m.family, m.name) AS family, p.depth AS depth, p.device_layers AS on_device,
     m.layer_count AS layers
ORDER BY depth
WITH family, collect(depth) AS depths, sum(CASE WHEN on_device = layers THEN 1 ELSE 0 END)
     AS device_only
RETURN family, size(depths) AS models, depths, depths[0] AS min_depth,
       depths[size(depths) / 2] AS median_depth,
       reduce(s = 0.0, d IN depths | s + d) / size(depths) AS mean_depth,
       depths[-1] AS max_depth, device_only
ORDER BY median_depth, family
