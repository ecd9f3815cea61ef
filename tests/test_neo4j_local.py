"""The local Neo4j server that scripts/neo4j-local starts (and .ci/run starts before the tests)."""

from __future__ import annotations

import os
import urllib.request

from neo4j import GraphDatabase

URI = os.environ.get("NEO4J_URI", "bolt://127.0.0.1:7687")
AUTH = (os.environ.get("NEO4J_USER", "neo4j"), os.environ.get("NEO4J_PASSWORD", "splitcut-dev"))


def test_bolt_answers_a_parameterised_query_as_neo4j_5_26_community():
    with GraphDatabase.driver(URI, auth=AUTH) as driver:
        records, _, _ = driver.execute_query("RETURN $x + 1 AS y", x=41)
        assert records[0]["y"] == 42
        records, _, _ = driver.execute_query(
            "CALL dbms.components() YIELD versions, edition RETURN versions[0] AS v, edition"
        )
    assert records[0]["v"].startswith("5.26")
    assert records[0]["edition"] == "community"


def test_browser_is_served_at_browser():
    with urllib.request.urlopen("http://127.0.0.1:7474/browser/", timeout=10) as response:
        assert response.status == 200
        assert b"Neo4j Browser" in response.read()
