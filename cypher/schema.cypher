// Constraints and indexes of the splitcut graph. No parameters; idempotent.
CREATE CONSTRAINT model_name IF NOT EXISTS FOR (m:Model) REQUIRE m.name IS UNIQUE;
CREATE CONSTRAINT layer_uid IF NOT EXISTS FOR (l:Layer) REQUIRE l.uid IS UNIQUE;
CREATE CONSTRAINT block_uid IF NOT EXISTS FOR (b:Block) REQUIRE b.uid IS UNIQUE;
CREATE CONSTRAINT block_type_signature IF NOT EXISTS FOR (t:BlockType) REQUIRE t.signature IS UNIQUE;
CREATE INDEX layer_model_topo IF NOT EXISTS FOR (l:Layer) ON (l.model, l.topo);
CREATE INDEX block_model_index IF NOT EXISTS FOR (b:Block) ON (b.model, b.index);
CREATE INDEX partition_model IF NOT EXISTS FOR (p:Partition) ON (p.model);
