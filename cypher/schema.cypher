// Constraints and indexes of the splitcut graph. No parameters; idempotent.
// Layers and blocks belong to a version of their model (`version`, the model's `version` names
// the current one), so the indexes lead with (model, version).
// Internal: a step splitcut runs itself; `splitcut query` does not offer it.
CREATE CONSTRAINT model_name IF NOT EXISTS FOR (m:Model) REQUIRE m.name IS UNIQUE;
CREATE CONSTRAINT layer_uid IF NOT EXISTS FOR (l:Layer) REQUIRE l.uid IS UNIQUE;
CREATE CONSTRAINT block_uid IF NOT EXISTS FOR (b:Block) REQUIRE b.uid IS UNIQUE;
CREATE CONSTRAINT block_type_signature IF NOT EXISTS FOR (t:BlockType) REQUIRE t.signature IS UNIQUE;
DROP INDEX layer_model_topo IF EXISTS;
DROP INDEX block_model_index IF EXISTS;
CREATE INDEX layer_version_topo IF NOT EXISTS FOR (l:Layer) ON (l.model, l.version, l.topo);
CREATE INDEX block_version_index IF NOT EXISTS FOR (b:Block) ON (b.model, b.version, b.index);
CREATE INDEX partition_model IF NOT EXISTS FOR (p:Partition) ON (p.model);
CREATE INDEX policy_model IF NOT EXISTS FOR (p:Policy) ON (p.model, p.parameter);
CREATE INDEX partition_scenario IF NOT EXISTS FOR (p:Partition) ON (p.scenario_key);
CREATE INDEX model_family IF NOT EXISTS FOR (m:Model) ON (m.family);
CREATE INDEX model_device IF NOT EXISTS FOR (m:Model) ON (m.device);
