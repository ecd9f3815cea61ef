"""The Neo4j store: the only package that imports `neo4j`.

`connection` says where the server is (and what can go wrong reaching it), `rows` builds the
rows of its batched statements, `store` reads and writes models, blocks and partitions. It only
reads and writes: partitions of stored models are solved in `toolkit.partition.stored`.
"""

from toolkit.store.connection import (
    MAX_MODEL_NAME,
    Connection,
    ModelChangedError,
    StoreError,
    TransactionTooLargeError,
)
from toolkit.store.store import Store

__all__ = ["MAX_MODEL_NAME", "Connection", "ModelChangedError", "Store", "StoreError",
           "TransactionTooLargeError"]
