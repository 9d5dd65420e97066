"""The browser playground (steerlab/serve/playground/), in a real browser against a real server.

Static checks (always run): the page ships in the package, needs no network, and `mount_playground`
serves it at `/playground/` with `/` redirecting there.

Browser checks (`slow`): Debian's `chromium`, headless, driven by Playwright's Python package with the
system executable (no browser download), against `steerlab serve` on the embedded model on a free
loopback port, with an API key. Without Chromium or Playwright they skip with a message naming what to
install (they fail instead where STEERLAB_REQUIRE_BROWSER=1, as CI sets it).
`STEERLAB_PLAYGROUND_SCREENSHOT=docs/playground.png` also saves screenshots of the page after the
compare run and (as playground-sweep.png) the sweep run: how the README's picture is made.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import replace
from importlib import resources
from pathlib import Path

import pytest

STATIC = resources.files("steerlab") / "serve" / "playground" / "static"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
KEY = "playground-test-key"
PROMPT = "How was your weekend?"
MAX_TOKENS = 24
SLIDER = -8.0  # the test moves the slider here, to the negative side (the vector's own strength is +6)


# ------------------------------------------------------------------ static: shipped, offline, mounted

def test_page_ships_in_the_package():
    names = {p.name for p in STATIC.iterdir()}
    assert {"index.html", "app.js", "style.css"} <= names
    html = (STATIC / "index.html").read_text()
    assert 'src="app.js"' in html and 'href="style.css"' in html  # relative: works under any prefix
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    if pyproject.exists():  # an installed wheel has no pyproject; the files above are then the proof
        text = pyproject.read_text()
        for ext in ("html", "js", "css"):
            assert f"serve/playground/static/*.{ext}" in text


def test_page_needs_no_network():
    """No CDN, font or analytics URL: the page loads from the server alone."""
    for name in ("index.html", "app.js", "style.css"):
        text = (STATIC / name).read_text()
        urls = re.findall(r"""(?:src|href|url|fetch|import)\s*[=(]\s*["']?(?:https?:)?//""", text)
        assert not urls, f"{name} loads something from the network: {urls}"
        assert "@import" not in text


def test_script_parses():
    node = shutil.which("node")
    if not node:
        pytest.skip("needs node to check app.js without a browser (the browser tests load it anyway)")
    with resources.as_file(STATIC / "app.js") as js:
        r = subprocess.run([node, "--check", str(js)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_mount_serves_the_page_and_redirects_root():
    pytest.importorskip("fastapi")
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from steerlab.serve.playground import mount_playground

    app = FastAPI()
    mount_playground(app)
    with TestClient(app) as c:
        for path in ("/", "/playground"):
            r = c.get(path, follow_redirects=False)
            assert r.status_code in (301, 302, 307, 308), (path, r.status_code)
            assert r.headers["location"].rstrip("/").endswith("playground")
        r = c.get("/playground/")
        assert r.status_code == 200 and "text/html" in r.headers["content-type"]
        assert "steerlab" in r.text and "app.js" in r.text
        r = c.get("/playground/app.js")
        assert r.status_code == 200 and "javascript" in r.headers["content-type"]
        assert c.get("/playground/style.css").status_code == 200
        assert c.get("/playground/__init__.py").status_code == 404  # only the static folder is served


# ------------------------------------------------------------------ browser against a real server

def _chromium() -> str | None:
    return os.environ.get("STEERLAB_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def _missing(why: str):
    """Skip, or fail where CI sets STEERLAB_REQUIRE_BROWSER=1 (so a missing browser cannot pass unseen)."""
    if os.environ.get("STEERLAB_REQUIRE_BROWSER") == "1":
        pytest.fail(why + " (STEERLAB_REQUIRE_BROWSER=1)")
    pytest.skip(why)


@pytest.fixture(scope="module")
def playwright_or_skip():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("browser tests need the Python package 'playwright' (pip install playwright; "
                 "no browser download: they drive Debian's chromium)")
    if not _chromium():
        _missing("browser tests need Chromium: apt-get install chromium (Debian package 'chromium')")
    for mod in ("fastapi", "uvicorn"):
        try:
            __import__(mod)
        except ImportError:
            _missing(f"browser tests run steerlab serve, which needs {mod}: pip install -e '.[server]'")
    with sync_playwright() as p:
        yield p


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url: str, body: dict | None = None, key: str | None = KEY, timeout: float = 300) -> dict:
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                 headers={"content-type": "application/json",
                                          **({"authorization": f"Bearer {key}"} if key else {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        raise AssertionError(f"{url} answered {e.code}: {e.read().decode(errors='replace')}") from None


@pytest.fixture(scope="module")
def vector_files(real_lm, tmp_path_factory):
    """Two CAA vectors on the demo pairs: 'cheerful' (layer 12, with its measured effect table, chosen
    strength 6) and 'cheer-multi' (layers 8 and 12, layer 12 chosen)."""
    from steerlab.data.demo import DEMO_TRAIN, demo_pairs
    from steerlab.effect import measure_effect
    from steerlab.methods import train_caa
    from steerlab.vector import SteeringVector

    pairs = demo_pairs()
    train, held = pairs[:DEMO_TRAIN], pairs[DEMO_TRAIN:]
    d = tmp_path_factory.mktemp("playground_vectors")
    vec = train_caa(real_lm, train, [8, 12], position="mean")
    one = vec.select([12])
    rep = measure_effect(real_lm, one, held, strengths=[-6.0, 6.0], positions="after_user")
    cheerful = SteeringVector(one.directions, replace(one.meta, extra={
        **one.meta.extra, "strength": 6.0, "positions": "after_user", "effect": rep.rows()}))
    multi = SteeringVector(vec.directions, replace(vec.meta, extra={**vec.meta.extra, "selected_layers": [12]}))
    return {"cheerful": cheerful.save(d / "cheerful.safetensors"), "cheer-multi": multi.save(d / "multi.safetensors")}


@pytest.fixture(scope="module")
def server(vector_files, tmp_path_factory):
    """`steerlab serve` in its own process on a free loopback port, with an API key."""
    port = _free_port()
    log = tmp_path_factory.mktemp("playground_server") / "server.log"
    script = Path(sys.executable).with_name("steerlab")  # the installed command, as a user runs it
    launcher = [str(script)] if script.exists() else [sys.executable, "-c", "from steerlab.cli import main; main()"]
    # float32: the tests compare a batched answer with its solo rerun token for token, which is exact in
    # float32 only (bfloat16, what --dtype auto picks on avx512_bf16 CPUs, rounds differently by batch shape)
    cmd = [*launcher, "serve", "--port", str(port), "--api-key", KEY, "--dtype", "float32",
           *[a for name, path in vector_files.items() for a in ("--vector", f"{name}={path}")]]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    env.pop("STEERLAB_API_KEY", None)
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"steerlab serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if _request(base + "/health", key=None, timeout=2)["status"] == "ok":
                    break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"steerlab serve did not answer /health within 180 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture()
def page(playwright_or_skip, server, tmp_path):
    """A fresh headless Chromium (its own --user-data-dir) on the playground, API key entered once."""
    ctx = playwright_or_skip.chromium.launch_persistent_context(
        str(tmp_path / "profile"), executable_path=_chromium(), headless=True, args=CHROMIUM_ARGS,
        viewport={"width": 1400, "height": 900})
    pg = ctx.pages[0] if ctx.pages else ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.set_default_timeout(30_000)
    pg.goto(server + "/")
    assert pg.url.endswith("/playground/")
    try:
        # Without the key the list cannot load and the page says why.
        pg.wait_for_selector("#banner:not([hidden])")
        assert "API key" in pg.inner_text("#banner")
        pg.fill("#api-key", KEY)
        pg.click("#key-form button[type=submit]")
        pg.wait_for_selector("#vector-list li[data-vector='cheerful']")
    except Exception as e:
        raise AssertionError(f"the page did not list the served vectors ({e}); JavaScript errors: {errors}") from None
    yield pg
    ctx.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def _wait_done(pg, selector: str, n: int, timeout_ms: int = 300_000) -> None:
    pg.wait_for_function(
        """([sel, n]) => { const cs = [...document.querySelectorAll(sel)];
             return cs.length === n && cs.every(c => c.dataset.state === 'done' || c.dataset.state === 'error'); }""",
        arg=[selector, n], timeout=timeout_ms)
    errs = pg.locator(f"{selector} .col-error")
    assert errs.count() == 0, errs.all_inner_texts()


def _text(pg, selector: str) -> str:
    return pg.inner_text(f"{selector} .col-text")


def _chat(server: str, steering) -> str:
    model = _request(server + "/health", key=None)["model"]
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": MAX_TOKENS,
            "temperature": 0}
    if steering:
        body["steering"] = steering
    return _request(server + "/v1/chat/completions", body)["choices"][0]["message"]["content"]


@pytest.mark.slow
def test_compare_streams_unsteered_and_steered_side_by_side(page, server):
    pg = page
    pg.check("#pick-cheerful")
    ctl = pg.locator(".ctl[data-vector='cheerful']")
    # Prefilled from the vector's metadata: chosen strength 6, its one layer, its positions.
    assert float(ctl.locator(".strength-num").input_value()) == 6.0
    assert ctl.locator(".chip.on").all_inner_texts() == ["12"]
    assert ctl.locator(".positions").input_value() == "after_user"
    ctl.locator(".strength-slider").fill(str(SLIDER))  # move the slider
    assert float(ctl.locator(".strength-num").input_value()) == SLIDER
    pg.fill("#prompt", PROMPT)
    pg.fill("#max-tokens", str(MAX_TOKENS))
    pg.click("#run-btn")
    _wait_done(pg, "#columns .col", 2)
    unsteered, steered = _text(pg, "#col-unsteered"), _text(pg, "#col-steered")
    assert unsteered.strip() and steered.strip()
    assert steered != unsteered
    # Streamed in pieces, not delivered as one blob.
    assert int(pg.get_attribute("#col-steered", "data-chunks") or 0) > 1
    assert int(pg.get_attribute("#col-unsteered", "data-chunks") or 0) > 1
    # The page sent what its controls say: the same request made directly gives the same text (greedy).
    assert steered == _chat(server, {"vector": "cheerful", "strength": SLIDER, "layers": [12], "positions": "after_user"})
    assert unsteered == _chat(server, None)
    assert f"cheerful {SLIDER:+g} @L12 after_user" in pg.inner_text("#col-steered .col-sub")
    # Details of the ticked vector: method, layer, norm, chosen strength and the measured effect table.
    meta = pg.inner_text("#meta-body")
    assert "caa" in meta and "L12" in meta
    rows = pg.locator("#meta-body table.effect tbody tr")
    assert rows.count() == 3  # strengths -6, 0, +6
    shot = os.environ.get("STEERLAB_PLAYGROUND_SCREENSHOT")
    if shot:
        pg.set_viewport_size({"width": 1400, "height": 900})
        pg.screenshot(path=shot, full_page=True)


@pytest.mark.slow
def test_a_strength_schedule_is_sent_and_a_bad_one_named_before_any_request(page, server):
    pg = page
    pg.check("#pick-cheerful")
    ctl = pg.locator(".ctl[data-vector='cheerful']")
    assert ctl.locator(".schedule").input_value() == "constant"
    # A typo is named in the page and nothing is run.
    ctl.locator(".schedule").fill("later:3")
    assert "bad" in ctl.locator(".schedule").get_attribute("class")
    pg.fill("#prompt", PROMPT)
    pg.fill("#max-tokens", str(MAX_TOKENS))
    pg.click("#run-btn")
    pg.wait_for_selector("#banner:not([hidden])")
    assert 'cheerful: unknown strength schedule "later:3"' in pg.inner_text("#banner")
    assert pg.locator("#columns .col").count() == 0
    # The push on the first 8 steered positions only: the same text as that request made directly, and not
    # the constant push's text (so the schedule reached the server).
    ctl.locator(".schedule").fill("first:8")
    assert "bad" not in ctl.locator(".schedule").get_attribute("class")
    pg.click("#run-btn")
    _wait_done(pg, "#columns .col", 2)
    term = {"vector": "cheerful", "strength": 6.0, "layers": [12], "positions": "after_user"}
    steered = _text(pg, "#col-steered")
    assert steered == _chat(server, {**term, "schedule": "first:8"})
    assert steered != _chat(server, term)
    assert "cheerful +6 @L12 after_user first:8" in pg.inner_text("#col-steered .col-sub")


@pytest.mark.slow
def test_sweep_shows_one_column_per_strength_with_two_vectors(page, server):
    pg = page
    pg.check("#pick-cheerful")
    pg.check("#pick-cheer-multi")  # several vectors at once
    multi = pg.locator(".ctl[data-vector='cheer-multi']")
    assert multi.locator(".chip.on").all_inner_texts() == ["12"]  # selected_layers from its metadata
    assert multi.locator(".chip").all_inner_texts() == ["8", "12"]
    multi.locator(".strength-num").fill("0")  # the second vector ticked but at 0: adds nothing
    pg.click("#tab-sweep")
    pg.select_option("#sweep-vector", "cheerful")
    pg.fill("#sweep-strengths", "-8, 0, 8")
    pg.fill("#prompt", PROMPT)
    pg.fill("#max-tokens", str(MAX_TOKENS))
    pg.click("#run-btn")
    _wait_done(pg, "#columns .col", 3)
    neg, zero, pos = (_text(pg, f"#col-sweep-{i}") for i in range(3))
    assert len({neg, zero, pos}) == 3
    assert zero == _chat(server, None)  # strength 0 everywhere is the unsteered model
    assert pos == _chat(server, {"vector": "cheerful", "strength": 8.0, "layers": [12], "positions": "after_user"})
    shot = os.environ.get("STEERLAB_PLAYGROUND_SCREENSHOT")
    if shot:
        pg.screenshot(path=str(Path(shot).with_name(Path(shot).stem + "-sweep.png")), full_page=True)
    # A bad sweep list is refused in the page, before any request.
    pg.fill("#sweep-strengths", "-8, 8")
    pg.click("#run-btn")
    pg.wait_for_selector("#banner:not([hidden])")
    assert "3 to 5" in pg.inner_text("#banner")


@pytest.mark.slow
def test_upload_shows_validation_errors_and_registers_a_valid_file(page, server, vector_files):
    pg = page
    pg.set_input_files("#upload-file", files=[{"name": "broken.safetensors", "mimeType": "application/octet-stream",
                                              "buffer": b"this is not a vector file"}])
    assert pg.input_value("#upload-name") == "broken"  # named after the file
    pg.click("#upload-btn")
    pg.wait_for_selector("#upload-error:not([hidden])")
    err = pg.inner_text("#upload-error")
    assert err.startswith("Not registered:") and len(err) > len("Not registered: ") + 5, err
    assert pg.locator("#vector-list li[data-vector='broken']").count() == 0

    pg.set_input_files("#upload-file", str(vector_files["cheerful"]))
    pg.fill("#upload-name", "cheerful-copy")
    pg.click("#upload-btn")
    pg.wait_for_selector("#vector-list li[data-vector='cheerful-copy']")
    assert pg.is_hidden("#upload-error")
    assert "Registered 'cheerful-copy'" in pg.inner_text("#upload-ok")
    # The same name again: the server's 409 is shown.
    pg.set_input_files("#upload-file", str(vector_files["cheerful"]))
    pg.fill("#upload-name", "cheerful-copy")
    pg.click("#upload-btn")
    pg.wait_for_selector("#upload-error:not([hidden])")
    assert "cheerful-copy" in pg.inner_text("#upload-error")
    # Remove it again from its details panel (confirm dialog accepted).
    pg.click("#vector-list li[data-vector='cheerful-copy'] .vname")
    pg.once("dialog", lambda d: d.accept())
    pg.click("#delete-vector")
    pg.wait_for_selector("#vector-list li[data-vector='cheerful-copy']", state="detached")


@pytest.mark.slow
def test_api_key_is_entered_once_and_a_wrong_key_is_reported(page, server):
    pg = page
    pg.reload()  # the key survives a reload (sessionStorage): no second prompt
    pg.wait_for_selector("#vector-list li[data-vector='cheerful']")
    assert pg.is_hidden("#banner")
    assert pg.evaluate("sessionStorage.getItem('steerlab.apiKey')") == KEY
    pg.fill("#api-key", "wrong-key")
    pg.click("#key-form button[type=submit]")
    pg.wait_for_selector("#banner:not([hidden])")
    assert "API key" in pg.inner_text("#banner")


@pytest.mark.slow
def test_stop_cancels_the_streams_on_the_server(page, server):
    pg = page
    pg.check("#pick-cheerful")
    pg.fill("#max-tokens", "400")
    pg.click("#run-btn")
    pg.wait_for_function("""() => [...document.querySelectorAll('#columns .col')].every(
                              c => c.dataset.state === 'streaming' && +(c.dataset.chunks || 0) >= 2)""",
                         timeout=120_000)
    pg.click("#stop-btn")
    pg.wait_for_function("""() => [...document.querySelectorAll('#columns .col')].every(c => c.dataset.state === 'stopped')""")
    assert pg.is_enabled("#run-btn")
    deadline = time.monotonic() + 30  # the server drops the abandoned rows instead of generating 400 tokens
    while (h := _request(server + "/health", key=None))["active"] or h["queued"]:
        assert time.monotonic() < deadline, f"the server still generates for the stopped page: {h}"
        time.sleep(0.2)
