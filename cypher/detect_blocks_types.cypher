// Block detection, step 5: block types shared across models, keyed by the segment key's hash.
// $rows: [{uid, signature, name, size}]. Returns nothing.
// Internal: a step splitcut runs itself; `splitcut query` does not offer it.
// Each block keeps its own model's name for its type (the Browser's caption); the type keeps
// every model's name (`names`) and is named after what they share: their common leading
// words (`SiLU` for `SiLU features.8.2` and `SiLU stages.N.act`), else their first words,
// sorted, joined by ` | ` (`BertLayer | RobertaLayer`). Not after the model ingested first.
UNWIND $rows AS row
MERGE (t:BlockType {signature: row.signature})
  ON CREATE SET t.size = row.size, t.names = [row.name]
  ON MATCH SET t.names = CASE WHEN row.name IN coalesce(t.names, [t.name])
                              THEN coalesce(t.names, [t.name])
                              ELSE coalesce(t.names, [t.name]) + row.name END
WITH row, t, [n IN t.names | split(n, ' ')] AS words
WITH row, t, words, reduce(common = head(words), other IN tail(words) |
       common[0..reduce(same = 0, i IN range(0, size(common) - 1) |
         CASE WHEN same = i AND i < size(other) AND other[i] = common[i] THEN same + 1
              ELSE same END)]) AS common
SET t.name = CASE WHEN size(common) > 0 THEN reduce(s = head(common), w IN tail(common) | s + ' ' + w)
             ELSE reduce(s = '', first IN COLLECT { UNWIND words AS w RETURN DISTINCT w[0] AS first
                                                    ORDER BY first } |
                         s + CASE s WHEN '' THEN '' ELSE ' | ' END + first) END
WITH row, t
MATCH (b:Block {uid: row.uid})
SET b.signature = row.signature, b.name = row.name
MERGE (b)-[:OF_TYPE]->(t)
