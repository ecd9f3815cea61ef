// Name block types after what every stored block of theirs is called (not after the model
// ingested first): each model's blocks keep their model's name for their type; the type keeps
// those names in `names` and is named after their common leading words (`SiLU` for
// `SiLU features.8.2` and `SiLU stages.N.act`), else their first words, sorted, joined by
// ` / ` (`BertLayer / RobertaLayer`). Run after a model's blocks are detected (its types) and
// after a sweep deleted blocks (the types they had): a deleted or replaced model's names go.
// Each type is read under its write lock, which also orders it against blocks being joined to
// it or deleted, so two writers at once leave the names of what is stored.
// $types: [{signature, name}], sorted by signature (locks taken in one order): after a
// detection each type with the model's name for it, a type that has the name already left as
// it is; after a sweep the name null, and the type named again from its stored blocks.
// Returns nothing.
// Internal: a step splitcut runs itself; `splitcut query` does not offer it.
UNWIND $types AS type
MATCH (t:BlockType {signature: type.signature})
WHERE type.name IS NULL OR NOT type.name IN coalesce(t.names, [t.name])
SET t.locked = true  // the lock first, then the names: none added at once is lost
REMOVE t.locked
WITH t, COLLECT { MATCH (b:Block)-[:OF_TYPE]->(t) WHERE b.name IS NOT NULL
                  RETURN DISTINCT b.name AS name ORDER BY name } AS names
WHERE size(names) > 0  // (a type no stored block has keeps its last names)
WITH t, names, [n IN names | split(n, ' ')] AS words
WITH t, names, words, reduce(common = head(words), other IN tail(words) |
       common[0..reduce(same = 0, i IN range(0, size(common) - 1) |
         CASE WHEN same = i AND i < size(other) AND other[i] = common[i] THEN same + 1
              ELSE same END)]) AS common
SET t.names = names,
    t.name = CASE WHEN size(common) > 0
                  THEN reduce(s = head(common), w IN tail(common) | s + ' ' + w)
                  ELSE reduce(s = '', first IN COLLECT { UNWIND words AS w
                                                         RETURN DISTINCT w[0] AS first
                                                         ORDER BY first } |
                              s + CASE s WHEN '' THEN '' ELSE ' / ' END + first) END
