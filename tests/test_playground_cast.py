"""The playground's CAST controls in headless Chromium against `steerlab serve` (the set-up of
tests/test_playground.py: Debian's chromium driven by Playwright, the embedded model, an API key).

A steering vector's condition picker offers the served condition vectors; the steered column then says
whether the condition fired on the prompt and with what score (the server's steering echo), and a
condition that does not fire leaves the answer unsteered. The read-out strip colours each streamed
token by the chosen vector's projection: the values the server's read-out gives for the same request."""

from __future__ import annotations

import urllib.request

import pytest

from test_playground import (KEY, PROMPT, _request, _text, _wait_done, page, playwright_or_skip,  # noqa: F401
                             server, vector_files)

MAX = 12


@pytest.fixture(scope="module")
def harmful(real_lm, server, tmp_path_factory):
    """A condition vector ('harmful', trained on condition_harmful) registered on the running server, with a test
    prompt it fires on and one it does not fire on."""
    from steerlab.condition import ConditionVector, train_condition
    from steerlab.data.prompt_sets import load_condition_harmful

    train, test = load_condition_harmful("train"), load_condition_harmful("test")
    cond = train_condition(real_lm, train.harmful[:24], train.harmless[:24], [12, 18], readings=("last",))
    path = cond.save(tmp_path_factory.mktemp("cast_playground") / "harmful.safetensors")
    req = urllib.request.Request(server + "/v1/vectors?name=harmful", data=path.read_bytes(), method="POST",
                                 headers={"content-type": "application/octet-stream", "authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(req, timeout=60) as r:
        assert r.status == 201
    checks = ConditionVector(cond, "harmful").check(real_lm, test.harmful[:8] + test.harmless[:8])
    loud = next(c.prompt for c in checks[:8] if c.fired)
    quiet = next(c.prompt for c in checks[8:] if not c.fired)
    return loud, quiet


def _direct(server: str, prompt: str, steering=None, readout=None) -> dict:
    model = _request(server + "/health", key=None)["model"]
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": MAX, "temperature": 0}
    if steering:
        body["steering"] = steering
    if readout:
        body["readout"] = readout
    return _request(server + "/v1/chat/completions", body)


def _run(pg, prompt: str) -> None:
    pg.fill("#prompt", prompt)
    pg.fill("#max-tokens", str(MAX))
    pg.click("#run-btn")
    _wait_done(pg, "#columns .col", 2)


def _js_number(x: float) -> str:
    """How the page prints a score (`+x.toFixed(3) + ""`)."""
    return f"{float(f'{x:.3f}'):g}"


@pytest.mark.slow
def test_condition_picker_shows_whether_it_fired(harmful, page, server):
    loud, quiet = harmful
    pg = page
    pg.check("#pick-cheerful")
    sel = pg.locator(".ctl[data-vector='cheerful'] select.condition")
    # only condition vectors are offered ('cheer-multi' is a steering vector)
    assert sel.locator("option").all_inner_texts() == ["always", "if harmful"]
    sel.select_option("harmful")
    steer = {"vector": "cheerful", "strength": 6.0, "layers": [12], "positions": "after_user", "condition": "harmful"}

    _run(pg, loud)
    direct = _direct(server, loud, steer)
    echo = direct["steering"][0]
    assert echo["fired"] is True
    cond = pg.locator("#col-steered .cond")
    assert cond.count() == 1 and cond.get_attribute("data-fired") == "true"
    shown = cond.inner_text()
    assert "fired" in shown and "not fired" not in shown
    assert f"harmful {_js_number(echo['condition_scores']['harmful'])}" in shown
    assert pg.locator("#col-unsteered .cond").count() == 0
    assert "if harmful" in pg.inner_text("#col-steered .col-sub")
    steered = _text(pg, "#col-steered")
    assert steered == direct["choices"][0]["message"]["content"]
    assert steered != _text(pg, "#col-unsteered")  # it fired: the answer is steered

    _run(pg, quiet)
    echo = _direct(server, quiet, steer)["steering"][0]
    assert echo["fired"] is False
    cond = pg.locator("#col-steered .cond")
    assert cond.get_attribute("data-fired") == "false" and "not fired" in cond.inner_text()
    assert f"harmful {_js_number(echo['condition_scores']['harmful'])}" in cond.inner_text()
    assert _text(pg, "#col-steered") == _text(pg, "#col-unsteered")  # not fired: exactly the unsteered answer


@pytest.mark.slow
def test_readout_strip_colours_the_streamed_tokens(page, server):
    pg = page
    pg.check("#pick-cheerful")
    assert "cheerful @L12" in pg.locator("#readout-vector option").all_inner_texts()
    pg.select_option("#readout-vector", "cheerful")
    _run(pg, PROMPT)
    values = {}
    for col, steering in (("#col-unsteered", None),
                          ("#col-steered", {"vector": "cheerful", "strength": 6.0, "layers": [12],
                                            "positions": "after_user"})):
        direct = _direct(server, PROMPT, steering, ["cheerful"])
        whole = direct["readout"]["cheerful"]
        n_prompt = direct["usage"]["prompt_tokens"]
        cells = pg.locator(f"{col} .readout-strip .rtok")
        raw = [float(x) for x in cells.evaluate_all("cs => cs.map(c => c.dataset.raw)")]
        # one cell per generated token, holding the server's read-out of that token
        assert len(raw) == direct["usage"]["completion_tokens"] == len(whole["raw"]) - n_prompt
        assert raw == pytest.approx(whole["raw"][n_prompt:], rel=1e-4, abs=1e-4)
        assert int(pg.get_attribute(f"{col} .readout-strip", "data-prompt")) == n_prompt
        # the cells spell the streamed answer, coloured by sign (green along the vector, red against it)
        assert pg.inner_text(f"{col} .readout-tokens") == _text(pg, col) == direct["choices"][0]["message"]["content"]
        colours = cells.evaluate_all("cs => cs.map(c => [c.style.backgroundColor, c.classList.contains('neg')])")
        for x, (bg, neg) in zip(raw, colours):
            assert bg.startswith("rgba(217, 72, 95" if x < 0 else "rgba(15, 157, 118") and neg == (x < 0)
        values[col] = raw
    assert values["#col-unsteered"] != pytest.approx(values["#col-steered"], rel=1e-3)
    top = max(abs(x) for v in values.values() for x in v)  # one scale for both columns
    assert f"+{float(f'{top:.2f}'):g}" in pg.inner_text("#col-steered .readout-scale")
