// Block detection, last step: name the block types a model shares with others after what every
// model's name for them shares (not after the model ingested first): their common leading
// words (`SiLU` for `SiLU features.8.2` and `SiLU stages.N.act`), else their first words,
// sorted, joined by ` / ` (`BertLayer / RobertaLayer`). A type keeps every model's name in
// `names`; it is written only when a model brings a name it lacks, under its write lock, so
// two models ingested at once both add theirs.
// $types: [{signature, name}], one per type of the model. Returns nothing.
// Internal: a step splitcut runs itself; `splitcut query` does not offer it.
UNWIND $types AS type
MATCH (t:BlockType {signature: type.signature})
WHERE NOT type.name IN coalesce(t.names, [t.name])
SET t.locked = true  // the lock first, then the names: none added at once is lost
REMOVE t.locked
WITH t, type, coalesce(t.names, [t.name]) AS known  // read under the lock: current
WITH t, CASE WHEN type.name IN known THEN known ELSE known + type.name END AS names
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
