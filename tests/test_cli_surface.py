"""The command line's surface (every command's name, arguments and options: flags, defaults, whether
required, help text) is held against a recorded snapshot, so a refactoring of `steerlab.cli` cannot
rename, drop or change an option unnoticed. After an intended change, regenerate the snapshot with
`python tests/test_cli_surface.py --write` and review its diff."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import typer
import typer.main
from typer.testing import CliRunner

from steerlab.cli.options import Runtime, Split, grouped  # module level: @grouped resolves annotations here

SNAPSHOT = Path(__file__).parent / "data" / "cli_surface.json"


def _param(p) -> dict:  # a click Parameter (typer may vendor its own click)
    default = p.default
    if callable(default) or not isinstance(default, (str, int, float, bool, type(None), list, tuple)):
        default = repr(default)
    return {"name": p.name, "kind": type(p).__name__, "opts": list(p.opts), "secondary": list(p.secondary_opts),
            "required": p.required, "default": list(default) if isinstance(default, tuple) else default,
            "multiple": p.multiple, "help": getattr(p, "help", None), "flag": getattr(p, "is_flag", False),
            "envvar": getattr(p, "envvar", None), "type": getattr(p.type_descriptor.annotation, "__name__", str(p.type_descriptor.annotation))}


def surface() -> dict:
    from steerlab.cli import app

    def walk(cmd, path: str) -> dict:
        out = {path: {"help": (cmd.help or "").strip(), "params": [_param(p) for p in cmd.params]}}
        if hasattr(cmd, "commands"):
            for name, sub in sorted(cmd.commands.items()):
                out.update(walk(sub, f"{path} {name}".strip()))
        return out

    return walk(typer.main.get_command(app), "")


def test_cli_surface_matches_the_snapshot():
    want = json.loads(SNAPSHOT.read_text())
    got = json.loads(json.dumps(surface()))
    assert sorted(got) == sorted(want), "commands differ"
    for cmd in want:
        assert got[cmd]["help"] == want[cmd]["help"], f"`steerlab {cmd}`: help text changed"
        # Positional arguments keep their order; options are matched by name (their order is only --help's).
        args = [[p for p in c[cmd]["params"] if p["kind"].endswith("Argument")] for c in (got, want)]
        assert args[0] == args[1], f"`steerlab {cmd}`: arguments changed"
        opts = [{p["name"]: p for p in c[cmd]["params"] if not p["kind"].endswith("Argument")} for c in (got, want)]
        assert sorted(opts[0]) == sorted(opts[1]), f"`steerlab {cmd}`: options added or removed"
        for name in opts[1]:
            assert opts[0][name] == opts[1][name], f"`steerlab {cmd}`: option {name} changed"


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    SNAPSHOT.write_text(json.dumps(surface(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {SNAPSHOT}")


def test_option_groups_reach_the_command_as_typed_instances():
    app, seen = typer.Typer(), {}

    @app.command()
    @grouped
    def probe(name: str = typer.Argument(...), split: Split = Split(), run: Runtime = Runtime()) -> None:
        seen.update(name=name, split=split, run=run)

    res = CliRunner().invoke(app, ["x", "--n-train", "7", "--seed", "3", "--force", "--model", "m"])
    assert res.exit_code == 0, res.output
    assert seen == {"name": "x", "split": Split(n_train=7, n_test=100, seed=3),
                    "run": Runtime(model="m", threads=None, force=True)}

    with pytest.raises(TypeError, match="repeats a parameter"):
        @grouped
        def clash(seed: int = 0, split: Split = Split()) -> None: ...
