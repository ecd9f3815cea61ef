// Block detection, step 5: block types shared across models, keyed by the segment key's hash.
// $rows: [{uid, signature, name, size}]. Returns nothing.
// Internal: a step splitcut runs itself; `splitcut query` does not offer it.
// Each block keeps its own model's name for its type (the Browser's caption); the type keeps
// every model's name (`names`) and is named after what they share: their common leading
// words (`SiLU` for `SiLU features.8.2` and `SiLU stages.N.act`), else their first words,
// sorted, joined by ` | ` (`BertLayer | RobertaLayer`). Not after the model ingested first.
// A type is touched once per batch, and written only when a model brings a name it lacks
// (writers of one model's batches do not wait on each other for it).
UNWIND $rows AS row
WITH row.signature AS signature, row.name AS name, row.size AS size, collect(row.uid) AS uids
MERGE (t:BlockType {signature: signature})
  ON CREATE SET t.size = size, t.names = [name], t.name = name
WITH t, name, uids, coalesce(t.names, [t.name]) AS known
CALL (t, name, known) {
  WITH t, name, known WHERE NOT name IN known
  SET t.names = known + name
  WITH t, [n IN known + name | split(n, ' ')] AS words
  WITH t, words, reduce(common = head(words), other IN tail(words) |
         common[0..reduce(same = 0, i IN range(0, size(common) - 1) |
           CASE WHEN same = i AND i < size(other) AND other[i] = common[i] THEN same + 1
                ELSE same END)]) AS common
  SET t.name = CASE WHEN size(common) > 0
                    THEN reduce(s = head(common), w IN tail(common) | s + ' ' + w)
                    ELSE reduce(s = '', first IN COLLECT { UNWIND words AS w
                                                           RETURN DISTINCT w[0] AS first
                                                           ORDER BY first } |
                                s + CASE s WHEN '' THEN '' ELSE ' | ' END + first) END
}
WITH t, name, uids
UNWIND uids AS uid
MATCH (b:Block {uid: uid})
SET b.signature = t.signature, b.name = name
MERGE (b)-[:OF_TYPE]->(t)
