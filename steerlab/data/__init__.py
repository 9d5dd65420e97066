"""Datasets for steering: records, loaders, prompt formats and the task registry (pure Python).

Everything here works without a model. Loaders raise :class:`~steerlab.errors.DatasetError`
with the file and line of a bad record.
"""

from __future__ import annotations

from .io import Row, default_data_root, read_csv, read_json, read_records, read_text, require_data_root
from .mc import load_mc_csv, load_mc_jsonl, resolve_gold
from .mc_formats import (
    load_arc,
    load_bbq,
    load_ethics,
    load_hf_mc,
    load_lsat,
    load_mmlu,
    load_mwe_mc,
    load_openbookqa,
    load_truthfulqa_mc,
    split_ab_question,
)
from .mwe import load_mwe, split_items
from .ood import LENGTHS, list_ood_behaviours, load_corpus, load_ood, load_ood_dir
from .demo import DEMO_LAYER, DEMO_STRENGTH, DEMO_TRAIN, demo_pairs
from .pairs import load_pairs
from .prompts import ANSWER_SUFFIX, LETTERS, format_mc_prompt, gold_letter, letter_choice, shuffle_choices
from .records import BehaviourItem, ContrastPair, MCItem, OODPrompt
from .tasks import (
    CAE_BEHAVIOURS,
    TASKS,
    Task,
    detect_format,
    get_task,
    list_tasks,
    load_file,
    load_task,
    resolve_behaviour,
)

__all__ = [
    # records
    "BehaviourItem",
    "ContrastPair",
    "MCItem",
    "OODPrompt",
    # io
    "Row",
    "default_data_root",
    "require_data_root",
    "read_csv",
    "read_json",
    "read_records",
    "read_text",
    # loaders
    "load_pairs",
    "demo_pairs",
    "DEMO_TRAIN",
    "DEMO_LAYER",
    "DEMO_STRENGTH",
    "load_mwe",
    "split_items",
    "load_mc_jsonl",
    "load_mc_csv",
    "load_bbq",
    "load_truthfulqa_mc",
    "load_openbookqa",
    "load_arc",
    "load_mwe_mc",
    "load_ethics",
    "load_mmlu",
    "load_lsat",
    "load_hf_mc",
    "resolve_gold",
    "split_ab_question",
    "load_ood",
    "load_ood_dir",
    "list_ood_behaviours",
    "load_corpus",
    "LENGTHS",
    # prompts
    "LETTERS",
    "ANSWER_SUFFIX",
    "format_mc_prompt",
    "gold_letter",
    "letter_choice",
    "shuffle_choices",
    # tasks
    "Task",
    "TASKS",
    "CAE_BEHAVIOURS",
    "get_task",
    "list_tasks",
    "detect_format",
    "load_file",
    "load_task",
    "resolve_behaviour",
]
