"""Saved Cypher queries, shipped in the package as `toolkit.cypher` (see README.md here)."""
