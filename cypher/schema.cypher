// Constraints and indexes of the splitcut graph. No parameters; idempotent.
// Layers and blocks belong to a version of their model (`version`, the model's `version` names
// the current one): every statement finds them by (model, version, position), a key the
// database keeps unique. Their `uid`s (SHA-256 of model, version and name or index) are unique
// by construction and need no index of their own: a second index per layer cost an ingest 3-5%
// (docs/benchmarks.md).
// Internal: a step splitcut runs itself; `splitcut query` does not offer it.
CREATE CONSTRAINT model_name IF NOT EXISTS FOR (m:Model) REQUIRE m.name IS UNIQUE;
CREATE CONSTRAINT block_type_signature IF NOT EXISTS FOR (t:BlockType) REQUIRE t.signature IS UNIQUE;
// (the schemas before: a uid constraint per layer and block beside a plain (model, version, ...)
// index, two indexes per node where one does; the old ones go first, as a constraint cannot be
// made over the properties of an index)
DROP CONSTRAINT layer_uid IF EXISTS;
DROP CONSTRAINT block_uid IF EXISTS;
DROP INDEX layer_model_topo IF EXISTS;
DROP INDEX block_model_index IF EXISTS;
DROP INDEX layer_version_topo IF EXISTS;
DROP INDEX block_version_index IF EXISTS;
CREATE CONSTRAINT layer_key IF NOT EXISTS FOR (l:Layer) REQUIRE (l.model, l.version, l.topo) IS UNIQUE;
CREATE CONSTRAINT block_key IF NOT EXISTS FOR (b:Block) REQUIRE (b.model, b.version, b.index) IS UNIQUE;
CREATE INDEX partition_model IF NOT EXISTS FOR (p:Partition) ON (p.model);
CREATE INDEX policy_model IF NOT EXISTS FOR (p:Policy) ON (p.model, p.parameter);
CREATE INDEX partition_scenario IF NOT EXISTS FOR (p:Partition) ON (p.scenario_key);
CREATE INDEX model_family IF NOT EXISTS FOR (m:Model) ON (m.family);
CREATE INDEX model_device IF NOT EXISTS FOR (m:Model) ON (m.device);
