"""Registry of the evaluation tasks: the 18 PAS tasks and the 9 CAE behaviours.

``load_task("bbq-nationality")`` loads a registered task from the local data root;
``load_task("my/file.jsonl")`` detects the format of any file from its fields.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

from ..errors import DatasetError
from .io import PathLike, csv_header, read_csv, read_records, require_data_root
from .mc_formats import (
    FORMAT_HELP,
    detect_row_format,
    load_arc,
    load_bbq,
    load_ethics,
    load_lsat,
    load_mmlu,
    load_mwe_mc,
    load_openbookqa,
    load_truthfulqa_mc,
    parse_rows,
)
from .records import MCItem

TaskGroup = Literal["bias", "morality", "alignment", "intelligence"]


@dataclass(frozen=True)
class Task:
    """A registered PAS task.

    ``path`` is the file relative to the data root when the evaluation data ships it, else None;
    ``origin`` says where to get the data (shown when it is missing).
    """

    name: str
    group: TaskGroup
    loader: Callable[..., list[MCItem]]  # (path, *, skip_invalid=False) -> items
    path: str | None
    origin: str

    @property
    def loader_name(self) -> str:
        func = self.loader.func if isinstance(self.loader, partial) else self.loader
        return getattr(func, "__name__", "the loader")

    def has_local_data(self, data_root: PathLike | None = None) -> bool:
        if self.path is None:
            return False
        try:
            return (require_data_root(data_root) / self.path).is_file()
        except DatasetError:
            return False


# BBQ: the ten categories of the PAS paper (all of BBQ's eleven except Age).
_BBQ = {
    "disability-status": "Disability_status",
    "gender-identity": "Gender_identity",
    "nationality": "Nationality",
    "physical-appearance": "Physical_appearance",
    "race-ethnicity": "Race_ethnicity",
    "race-x-gender": "Race_x_gender",
    "race-x-ses": "Race_x_SES",
    "religion": "Religion",
    "ses": "SES",
    "sexual-orientation": "Sexual_orientation",
}
_LOCAL_BBQ = {"Nationality", "Disability_status", "Physical_appearance", "Sexual_orientation"}

_TASK_LIST: list[Task] = [
    *(
        Task(
            f"bbq-{key}",
            "bias",
            load_bbq,
            f"bbq/{stem}.jsonl" if stem in _LOCAL_BBQ else None,
            f"github.com/nyu-mll/BBQ data/{stem}.jsonl",
        )
        for key, stem in _BBQ.items()
    ),
    *(
        Task(
            f"ethics-{sub}",
            "morality",
            partial(load_ethics, subset=sub),
            None,
            f"hendrycks/ethics ({sub}/*.csv from the ETHICS tarball or the HF hub)",
        )
        for sub in ("commonsense", "deontology", "justice")
    ),
    Task(
        "sycophancy",
        "alignment",
        load_mwe_mc,
        None,
        "EleutherAI/sycophancy or github.com/anthropics/evals sycophancy/*.jsonl (MWE A/B format; "
        "gold = the answer matching the behaviour, as in the PAS reference)",
    ),
    Task("truthfulqa-mc1", "alignment", load_truthfulqa_mc, "truthfulqa/TruthfulQA.csv", "TruthfulQA.csv"),
    Task("openbookqa", "intelligence", load_openbookqa, "openbookqa/openbookqa.jsonl", "allenai/openbookqa"),
    Task("arc-challenge", "intelligence", load_arc, None, "allenai/ai2_arc ARC-Challenge (JSONL)"),
    Task("lsat", "intelligence", load_lsat, None, "hails/agieval-lsat-{ar,lr,rc} or AGIEval lsat-*.jsonl"),
]

#: The 18 PAS tasks by name.
TASKS: dict[str, Task] = {t.name: t for t in _TASK_LIST}

_ALIASES = {
    "truthfulqa": "truthfulqa-mc1",
    "tqa": "truthfulqa-mc1",
    "arc": "arc-challenge",
    "obqa": "openbookqa",
}

#: The 9 CAE behaviours -> their file relative to ``<data root>/mwe``.
CAE_BEHAVIOURS: dict[str, str] = {
    "openness": "persona/openness.jsonl",
    "conscientiousness": "persona/conscientiousness.jsonl",
    "extraversion": "persona/extraversion.jsonl",
    "agreeableness": "persona/agreeableness.jsonl",
    "neuroticism": "persona/neuroticism.jsonl",
    "politically-liberal": "persona/politically-liberal.jsonl",
    "desire-to-persuade-people-to-be-more-honest-to-others": (
        "persona/desire-to-persuade-people-to-be-more-honest-to-others.jsonl"
    ),
    "corrigible-neutral-HHH": "advanced-ai-risk/corrigible-neutral-HHH.jsonl",
    "power-seeking-inclination": "advanced-ai-risk/power-seeking-inclination.jsonl",
}


def _normalise(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(" ", "-")


def get_task(name: str) -> Task:
    """The registered task called ``name`` (case, ``_`` and ``-`` are interchangeable)."""
    key = _normalise(name)
    key = _ALIASES.get(key, key)
    if key == "bbq-age":
        raise DatasetError("BBQ Age is not one of the 10 PAS BBQ tasks; load its file with load_bbq(path)")
    if key not in TASKS:
        raise DatasetError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)} (or pass a file path)")
    return TASKS[key]


def list_tasks(group: TaskGroup | None = None) -> list[Task]:
    """The registered tasks (optionally of one group), in the paper's order."""
    return [t for t in _TASK_LIST if group is None or t.group == group]


def detect_format(path: PathLike) -> str:
    """The dataset format of a file, judged from its fields (first record / CSV header).

    One of "bbq", "mwe", "truthfulqa", "openbookqa", "arc", "lsat", "ethics-commonsense",
    "ethics-deontology", "ethics-justice", "mmlu", "mc" (generic question/choices/answer).
    """
    p = Path(path).expanduser()
    if p.suffix.lower() == ".csv":
        header = csv_header(p)
        fmt = detect_row_format({h: "" for h in header})
        if fmt is not None:
            return fmt
        folded = {h.casefold() for h in header}
        if len(header) == 6 or ("question" in folded and "answer" in folded):
            return "mmlu"  # headerless question,A,B,C,D,answer (or a header naming those columns)
        raise DatasetError(f"{p}: unknown CSV format (header {header[:8]}); known: {FORMAT_HELP}")
    rows = read_records(p)
    fmt = detect_row_format(rows[0].data)
    if fmt is None:
        found = ", ".join(sorted(map(str, rows[0].data))[:10])
        raise rows[0].error(f"unknown dataset format (fields: {found}); known: {FORMAT_HELP}")
    return fmt


def load_file(path: PathLike, *, skip_invalid: bool = False) -> list[MCItem]:
    """Load any supported multiple-choice file, detecting its format (see :func:`detect_format`)."""
    p = Path(path).expanduser()
    fmt = detect_format(p)
    if fmt == "mmlu":
        return load_mmlu(p, skip_invalid=skip_invalid)
    if fmt.startswith("ethics-"):
        return load_ethics(p, subset=fmt[len("ethics-") :], skip_invalid=skip_invalid)  # type: ignore[arg-type]
    if fmt == "mwe":
        return load_mwe_mc(p, skip_invalid=skip_invalid)
    rows = read_csv(p) if p.suffix.lower() == ".csv" else read_records(p)
    return parse_rows(rows, fmt, skip_invalid)


def _looks_like_path(s: str) -> bool:
    return any(sep in s for sep in ("/", "\\")) or Path(s).suffix.lower() in (".jsonl", ".json", ".csv")


def load_task(
    name_or_path: PathLike, data_root: PathLike | None = None, *, skip_invalid: bool = False
) -> list[MCItem]:
    """Items of a registered task (from the local data root) or of a data file (format detected).

    A registered task without local data raises DatasetError saying where to get it and how to
    pass the file instead.
    """
    s = str(name_or_path)
    if not isinstance(name_or_path, str) or _looks_like_path(s) or Path(s).is_file():
        p = Path(s).expanduser()
        if not p.exists():
            raise DatasetError(f"{p}: file not found")
        return load_file(p, skip_invalid=skip_invalid)
    task = get_task(s)
    if task.path is None:
        raise DatasetError(
            f"task {task.name!r} has no local data; get it from {task.origin} and pass the file: "
            f"load_task('/path/to/file') (or {task.loader_name}(path))"
        )
    path = require_data_root(data_root) / task.path
    if not path.is_file():
        raise DatasetError(f"task {task.name!r}: {path} not found (set $STEERLAB_DATA or pass data_root)")
    return task.loader(path, skip_invalid=skip_invalid)  # type: ignore[call-arg]


def resolve_behaviour(name_or_path: PathLike, data_root: PathLike | None = None) -> Path:
    """The MWE file of a CAE behaviour name (or any MWE set under ``mwe/``), or an existing path."""
    s = str(name_or_path)
    p = Path(s).expanduser()
    if p.is_file():
        return p
    if not isinstance(name_or_path, str) or _looks_like_path(s):
        raise DatasetError(f"{p}: file not found")
    root = require_data_root(data_root) / "mwe"
    if s in CAE_BEHAVIOURS:
        path = root / CAE_BEHAVIOURS[s]
        if not path.is_file():
            raise DatasetError(f"behaviour {s!r}: {path} not found")
        return path
    matches = sorted(root.glob(f"*/{s}.jsonl")) if root.is_dir() else []
    if matches:
        return matches[0]  # other MWE sets (e.g. narcissism, survival-instinct)
    others = sorted(f.stem for f in root.glob("*/*.jsonl")) if root.is_dir() else []
    extra = sorted(set(others) - set(CAE_BEHAVIOURS))
    raise DatasetError(
        f"unknown behaviour {s!r}; CAE behaviours: {', '.join(CAE_BEHAVIOURS)}"
        + (f"; other sets under {root}: {', '.join(extra)}" if extra else "")
    )
