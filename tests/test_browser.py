"""The Neo4j Browser in headless Chromium shows a partitioned model, styled by cypher/browser.

Needs the local server (scripts/neo4j-local start) and Debian's `chromium` and
`chromium-driver`. Set SPLITCUT_UPDATE_SCREENSHOT=1 to refresh docs/browser-partition.png.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from toolkit import api
from toolkit.store import Connection, Store
from toolkit.style_server import StyleServer

PASSWORD = os.environ.get("NEO4J_PASSWORD", "splitcut-dev")
BROWSER_URL = f"http://127.0.0.1:{os.environ.get('NEO4J_LOCAL_HTTP_PORT', '7474')}/browser/"
BOLT_ADDRESS = f"127.0.0.1:{os.environ.get('NEO4J_LOCAL_BOLT_PORT', '7687')}"
ROOT = Path(__file__).resolve().parent.parent
STYLE = ROOT / "cypher" / "browser" / "style.grass"
SCREENSHOT = ROOT / "docs" / "browser-partition.png"
CUT_SCREENSHOT = ROOT / "docs" / "browser-cut.png"
CUT_QUERY = ROOT / "cypher" / "browser" / "cut.cypher"
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1000",
)
MODEL = "resnet18"
SHOW_MODEL = (f"MATCH (:Model {{name: '{MODEL}'}})-[:HAS_LAYER]->(l:Layer) "
              "OPTIONAL MATCH (l)-[f:FEEDS]->(n:Layer) RETURN l, f, n")


@pytest.fixture(scope="module")
def style_url() -> Iterator[str]:
    with StyleServer() as server:
        yield server.url


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if binary is None or driver_path is None:
        pytest.fail("the Browser test needs Chromium: apt-get install -y chromium chromium-driver")
    options = Options()
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    with tempfile.TemporaryDirectory() as profile:
        options.add_argument(f"--user-data-dir={profile}")
        options.binary_location = binary
        driver = webdriver.Chrome(options=options, service=Service(driver_path))
        try:
            yield driver
        finally:
            driver.quit()


@pytest.fixture(scope="module")
def partitioned() -> dict[str, int]:
    """resnet18 partitioned through Neo4j on a scenario that cuts it in the middle."""
    with Store(Connection.from_env(password=PASSWORD)) as store:
        partition, written, _ = api.partition_in_neo4j(
            store, MODEL, api.make_scenario(link="5g"))
    counts = {"layers": written["layers"], "device": written["device"],
              "server": written["layers"] - written["device"]}
    assert counts["device"] == len(partition.device) and counts["server"] > 0  # both colours
    return counts


def _colours() -> dict[str, str]:
    """The fill colour style.grass gives each label."""
    found = re.findall(r"node\.(\w+)\s*\{[^}]*?\bcolor:\s*(#[0-9A-Fa-f]{6})", STYLE.read_text())
    return {label: colour.upper() for label, colour in found}


def _run(driver: Any, command: str) -> None:
    """Type a command into the Browser's editor and run it, as a user would."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    editor = driver.find_element(By.CSS_SELECTOR, "[data-testid=activeEditor]")
    ActionChains(driver).click(editor).perform()
    typed = editor.find_elements(By.CSS_SELECTOR, "textarea")
    if typed:  # the editor's input: one call for the whole text, not one action per key
        typed[0].send_keys(command)
    else:
        ActionChains(driver).send_keys(command).perform()
    driver.find_element(By.CSS_SELECTOR, "[data-testid=editor-Run]").click()


def _connect(driver: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait

    driver.get(BROWSER_URL)
    wait = WebDriverWait(driver, 60)

    def form_or_prompt(d: Any) -> Any:
        forms = d.find_elements(By.CSS_SELECTOR, "[data-testid=boltaddress]")
        prompts = d.find_elements(By.CSS_SELECTOR, "[data-testid=activeEditor]")
        if prompts and "neo4j$" in prompts[0].text:
            return "connected"  # this session is still connected (an earlier test's)
        return forms[0] if forms else False

    address = wait.until(form_or_prompt)
    if address == "connected":
        return
    # the form renders before its controls can take input: wait until the scheme is usable
    scheme = wait.until(lambda d: next(
        (e for e in d.find_elements(By.CSS_SELECTOR, "[data-testid=bolt-scheme-select]")
         if e.is_displayed() and e.is_enabled()), False))
    Select(scheme).select_by_visible_text("bolt://")
    address.send_keys(Keys.CONTROL, "a")  # a React input: clear() does not stick
    address.send_keys(Keys.DELETE, BOLT_ADDRESS)
    driver.find_element(By.CSS_SELECTOR, "[data-testid=username]").send_keys("neo4j")
    driver.find_element(By.CSS_SELECTOR, "[data-testid=password]").send_keys(PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "[data-testid=connect]").click()
    # connected: the prompt shows the database name
    wait.until(lambda d: "neo4j$" in d.find_element(
        By.CSS_SELECTOR, "[data-testid=activeEditor]").text)


def _fills(driver: Any, selector: str) -> dict[str, int]:
    """How many of the elements `selector` finds have each fill colour (one script call)."""
    fills: dict[str, int] = {}
    for fill in driver.execute_script(
            "return Array.from(document.querySelectorAll(arguments[0]))"
            ".map(e => (e.getAttribute('fill') || '').toUpperCase())", selector):
        fills[fill] = fills.get(fill, 0) + 1
    return fills


def _node_fills(driver: Any) -> dict[str, int]:
    return _fills(driver, "svg g.node circle[fill]")


def test_browser_renders_a_partitioned_model_in_the_style_colours(
    chromium, style_url, partitioned, tmp_path
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _connect(chromium)
    _run(chromium, f":style {style_url}")
    WebDriverWait(chromium, 30).until(lambda d: "node.Device" in d.find_element(
        By.CSS_SELECTOR, "[data-testid=frame]").text)
    _run(chromium, SHOW_MODEL)
    colours = _colours()
    expected = {colours["Device"]: partitioned["device"], colours["Server"]: partitioned["server"]}

    def rendered(driver: Any) -> bool:
        fills = _node_fills(driver)
        return all(fills.get(colour) == count for colour, count in expected.items())

    try:
        WebDriverWait(chromium, 60).until(rendered)
    finally:
        shot = SCREENSHOT if os.environ.get("SPLITCUT_UPDATE_SCREENSHOT") else tmp_path / "b.png"
        chromium.save_screenshot(str(shot))
    frame = chromium.find_element(By.CSS_SELECTOR, "[data-testid=frame]")
    assert f"Displaying {partitioned['layers']} nodes" in frame.text
    assert f"Device ({partitioned['device']})" in frame.text
    assert f"Server ({partitioned['server']})" in frame.text
    assert len(chromium.find_elements(By.CSS_SELECTOR, "svg g.node")) == partitioned["layers"]


def test_style_server_answers_the_browser_fetch_with_cors():
    import urllib.request

    with StyleServer() as server:
        with urllib.request.urlopen(server.url) as answer:
            assert answer.headers["Access-Control-Allow-Origin"] == "*"
            assert answer.read() == STYLE.read_bytes()
        preflight = urllib.request.Request(server.url, method="OPTIONS")
        with urllib.request.urlopen(preflight) as answer:
            assert answer.status == 200
        with urllib.request.urlopen(server.guide_url) as answer:
            guide = answer.read().decode()
            assert answer.headers["Content-Type"].startswith("text/html")
        assert "{{" not in guide and html.escape(_one_line(CUT_QUERY)[:60]) in " ".join(
            guide.split())  # the guide runs cut.cypher itself, not a copy of it
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(server.url.replace("style.grass", "etc/passwd"))
        assert missing.value.code == 404


def _one_line(path: Path) -> str:
    """A saved query as one line for the Browser's editor (Enter runs it), comments dropped."""
    return " ".join(line.strip() for line in path.read_text().splitlines()
                    if line.strip() and not line.lstrip().startswith("//"))


def test_the_cut_query_colours_blocks_by_side_and_draws_what_crosses(
    chromium, style_url, partitioned, tmp_path
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with Store(Connection.from_env(password=PASSWORD)) as store, \
            store.driver.session(database=store.connection.database) as session:
        sides = {r["side"]: r["n"] for r in session.run(
            "MATCH (m:Model {name: $m})<-[:OF]-(:Partition {current: true}) "
            "MATCH (b:Block {model: m.name, version: m.version}) WHERE b.tier IS NOT NULL "
            "RETURN CASE b.tier WHEN 0 THEN 'Device' ELSE 'Server' END AS side, "
            "count(b) AS n", m=MODEL)}
        crossing = session.run(
            "MATCH (:Layer {model: $m})-[c:CROSSES]->() RETURN count(c) AS n",
            m=MODEL).single()["n"]
    assert sides.get("Device", 0) > 0 and sides.get("Server", 0) > 0 and crossing > 0
    _connect(chromium)
    _run(chromium, f":style {style_url}")
    WebDriverWait(chromium, 30).until(lambda d: "CROSSES" in d.find_element(
        By.CSS_SELECTOR, "[data-testid=frame]").text)
    _run(chromium, f":param model => '{MODEL}'")
    _run(chromium, _one_line(CUT_QUERY))
    colours = _colours()
    red = re.search(r"relationship\.CROSSES\s*\{[^}]*?\bcolor:\s*(#[0-9A-Fa-f]{6})",
                    STYLE.read_text())
    assert red is not None

    def drawn(driver: Any) -> bool:
        fills = _node_fills(driver)
        blocks = fills.get(colours["Device"], 0) >= sides["Device"] and \
            fills.get(colours["Server"], 0) >= sides["Server"]
        shafts = _fills(driver, "svg g.relationship path").get(red.group(1).upper(), 0)
        return blocks and shafts >= crossing

    try:
        WebDriverWait(chromium, 60).until(drawn)
    finally:
        shot = CUT_SCREENSHOT if os.environ.get("SPLITCUT_UPDATE_SCREENSHOT") \
            else tmp_path / "cut.png"
        chromium.save_screenshot(str(shot))
    text = chromium.find_element(By.CSS_SELECTOR, "[data-testid=frame]").text
    assert "CROSSES" in text and " MB" in chromium.page_source  # the edges' size captions
    nodes = len(chromium.find_elements(By.CSS_SELECTOR, "svg g.node"))
    assert nodes < partitioned["layers"]  # the chain and the cut, not every layer


def test_the_guide_opens_in_the_browser(chromium, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with StyleServer() as server:
        _connect(chromium)
        _run(chromium, f":play {server.guide_url}")
        WebDriverWait(chromium, 30).until(
            lambda d: "where to cut a model for split learning" in d.find_element(
                By.CSS_SELECTOR, "[data-testid=frame]").text)
        page = chromium.page_source
        assert "splitcut partition resnet18 --neo4j --link 5g" in page
        assert "runnable" in page  # the later slides' clickable queries


def test_the_local_server_sends_no_telemetry_and_asks_no_consent():
    """scripts/neo4j-local's config: the Browser opens without the analytics banner."""
    with Store(Connection.from_env(password=PASSWORD)) as store, \
            store.driver.session(database="system") as session:
        settings = {r["name"]: r["value"] for r in session.run(
            "SHOW SETTINGS YIELD name, value WHERE name IN $names RETURN name, value",
            names=["client.allow_telemetry", "dbms.usage_report.enabled"])}
    assert settings == {"client.allow_telemetry": "false", "dbms.usage_report.enabled": "false"}
