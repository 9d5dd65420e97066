"""steerlab.data on the real evaluation data (skipped when the data root is missing)."""

from __future__ import annotations

import collections
import re
from pathlib import Path

import pytest

from steerlab.data import (
    CAE_BEHAVIOURS,
    LETTERS,
    BehaviourItem,
    ContrastPair,
    MCItem,
    default_data_root,
    detect_format,
    format_mc_prompt,
    gold_letter,
    letter_choice,
    list_ood_behaviours,
    list_tasks,
    load_bbq,
    load_corpus,
    load_mwe,
    load_mwe_mc,
    load_ood,
    load_ood_dir,
    load_openbookqa,
    load_task,
    load_truthfulqa_mc,
    resolve_behaviour,
    shuffle_choices,
    split_items,
)
from steerlab.errors import DatasetError

_ROOT = default_data_root()
needs_data = pytest.mark.skipif(
    _ROOT is None or not Path(_ROOT).is_dir(),
    reason="evaluation data not found: set STEERLAB_DATA or provide ../shared/data",
)


@pytest.fixture(scope="module")
def root() -> Path:
    assert _ROOT is not None
    return Path(_ROOT)


@pytest.fixture(scope="module")
def nationality(root: Path) -> list[MCItem]:
    return load_bbq(root / "bbq" / "Nationality.jsonl")


# --------------------------------------------------------------------------- MWE


@needs_data
@pytest.mark.parametrize("name", sorted(CAE_BEHAVIOURS))
def test_load_mwe_cae_behaviours(root: Path, name: str) -> None:
    path = resolve_behaviour(name, root)
    assert path == root / "mwe" / CAE_BEHAVIOURS[name]
    items = load_mwe(path)
    assert len(items) == 1000
    kind = "yesno" if CAE_BEHAVIOURS[name].startswith("persona/") else "ab"
    assert {it.kind for it in items} == {kind}
    assert all(it.source == name for it in items)
    assert [it.index for it in items] == list(range(1000))
    # The upstream sets are balanced between the two answers.
    assert collections.Counter(it.matching for it in items) == (
        {"Yes": 500, "No": 500} if kind == "yesno" else {"A": 500, "B": 500}
    )
    pair = items[0].to_pair()
    assert pair.prompt == items[0].question
    if kind == "ab":
        assert (pair.positive, pair.negative) == (f"({items[0].matching}", f"({items[0].not_matching}")
    else:
        assert pair.positive == items[0].matching and pair.negative == items[0].not_matching
        assert not pair.positive.startswith(" ")


@needs_data
def test_mwe_to_pair_conventions(root: Path) -> None:
    psi = load_mwe(root / "mwe/advanced-ai-risk/power-seeking-inclination.jsonl")
    a = next(it for it in psi if it.matching == "A")
    b = next(it for it in psi if it.matching == "B")
    assert a.to_pair() == ContrastPair(a.question, "(A", "(B")
    assert b.to_pair() == ContrastPair(b.question, "(B", "(A")
    openness = load_mwe(root / "mwe/persona/openness.jsonl")
    no = next(it for it in openness if it.matching == "No")
    assert no.to_pair() == ContrastPair(no.question, "No", "Yes")


@needs_data
def test_resolve_behaviour_other_sets_and_errors(root: Path) -> None:
    assert resolve_behaviour("narcissism", root).name == "narcissism.jsonl"
    path = root / "mwe/persona/openness.jsonl"
    assert resolve_behaviour(str(path)) == path
    with pytest.raises(DatasetError, match="unknown behaviour 'no-such-behaviour'.*openness"):
        resolve_behaviour("no-such-behaviour", root)
    with pytest.raises(DatasetError, match="file not found"):
        resolve_behaviour("missing/dir/file.jsonl", root)


@needs_data
def test_split_items_on_mwe(root: Path) -> None:
    items = load_mwe(root / "mwe/persona/openness.jsonl")
    train, test = split_items(items, 100, 50, seed=3)
    assert len(train) == 100 and len(test) == 50
    assert not {it.index for it in train} & {it.index for it in test}
    assert split_items(items, 100, 50, seed=3) == (train, test)
    assert split_items(items, 100, 50, seed=4)[0] != train
    rest = split_items(items, 900, seed=0)[1]
    assert len(rest) == 100
    with pytest.raises(DatasetError, match="cannot split 1000 items"):
        split_items(items, 900, 200, seed=0)


@needs_data
def test_load_mwe_mc_ab_sets(root: Path) -> None:
    for name in ("power-seeking-inclination", "corrigible-neutral-HHH"):
        items = load_mwe_mc(root / "mwe/advanced-ai-risk" / f"{name}.jsonl")
        raw = load_mwe(root / "mwe/advanced-ai-risk" / f"{name}.jsonl")
        assert len(items) == 1000
        for it, b in zip(items, raw):
            assert len(it.choices) == 2
            assert LETTERS[it.gold] == b.matching == it.meta_dict()["matching_letter"]
            assert not any(re.search(r"^\s*\([AB]\)", c) for c in it.choices)
            assert not it.question.rstrip().endswith("Choices:")
    first = load_mwe_mc(root / "mwe/advanced-ai-risk/power-seeking-inclination.jsonl")[0]
    assert first.choices[0].startswith("Yes, I agree that having greater power")
    assert first.question.endswith("Do you agree?")


@needs_data
def test_load_mwe_mc_persona_and_broken_rows(root: Path) -> None:
    items = load_mwe_mc(root / "mwe/persona/openness.jsonl")
    assert all(it.choices == ("Yes", "No") for it in items)
    assert items[1].gold == 1  # "I hate new ideas..." matches with " No"
    # Upstream coordinate-other-ais has unfilled template rows ("[Choice / possible answer here]").
    path = root / "mwe/advanced-ai-risk/coordinate-other-ais.jsonl"
    with pytest.raises(DatasetError, match=r"coordinate-other-ais\.jsonl, line 126: duplicate choice.*skip_invalid"):
        load_mwe_mc(path)
    with pytest.warns(UserWarning, match=r"skipped 4 invalid record\(s\) \(line 126, 228, 261, 879\)"):
        assert len(load_mwe_mc(path, skip_invalid=True)) == 996


# --------------------------------------------------------------------------- PAS tasks


@needs_data
@pytest.mark.parametrize(
    "stem,n", [("Nationality", 3080), ("Disability_status", 1556), ("Physical_appearance", 1576), ("Sexual_orientation", 864)]
)
def test_load_bbq(root: Path, stem: str, n: int) -> None:
    items = load_bbq(root / "bbq" / f"{stem}.jsonl")
    assert len(items) == n
    for it in items:
        meta = it.meta_dict()
        assert len(it.choices) == 3 and it.context
        assert meta["category"] == stem
        assert meta["context_condition"] in ("ambig", "disambig")
        assert meta["question_polarity"] in ("neg", "nonneg")
        # BBQ's design: in an ambiguous context the right answer is always the "unknown" one.
        if meta["context_condition"] == "ambig":
            assert it.gold == int(meta["unknown_choice"])


@needs_data
def test_load_truthfulqa(root: Path) -> None:
    items = load_truthfulqa_mc(root / "truthfulqa/TruthfulQA.csv")
    assert len(items) == 817
    assert all(it.gold == 0 and len(it.choices) >= 2 for it in items)
    assert all(len(set(it.choices)) == len(it.choices) and all(c.strip() for c in it.choices) for it in items)
    assert items[0].choices[0] == "The watermelon seeds pass through your digestive system"
    assert "You grow watermelons in your stomach" in items[0].choices
    assert items[0].meta_dict() == {"type": "Adversarial", "category": "Misconceptions"}


@needs_data
def test_load_openbookqa(root: Path) -> None:
    items = load_openbookqa(root / "openbookqa/openbookqa.jsonl")
    assert len(items) == 500 and all(len(it.choices) == 4 for it in items)
    assert collections.Counter(LETTERS[it.gold] for it in items) == {"A": 138, "C": 132, "B": 126, "D": 104}
    assert items[0].gold_text == "quit eating lunch out"


@needs_data
def test_task_registry(root: Path) -> None:
    tasks = list_tasks()
    assert len(tasks) == 18
    assert collections.Counter(t.group for t in tasks) == {"bias": 10, "morality": 3, "alignment": 2, "intelligence": 3}
    local = {t.name for t in tasks if t.has_local_data(root)}
    assert local == {
        "bbq-nationality", "bbq-disability-status", "bbq-physical-appearance", "bbq-sexual-orientation",
        "truthfulqa-mc1", "openbookqa",
    }
    assert len(load_task("bbq-nationality", root)) == 3080
    assert len(load_task("BBQ_Sexual_Orientation", root)) == 864  # case and _/- insensitive
    assert len(load_task("truthfulqa", root)) == 817  # alias
    for name in ("ethics-justice", "lsat", "bbq-religion", "sycophancy", "arc-challenge"):
        with pytest.raises(DatasetError, match=f"task '{name}' has no local data.*pass the file"):
            load_task(name, root)
    with pytest.raises(DatasetError, match="unknown task 'nope'"):
        load_task("nope", root)


@needs_data
def test_load_task_by_path_detects_format(root: Path) -> None:
    cases = {
        "bbq/Nationality.jsonl": ("bbq", 3080),
        "openbookqa/openbookqa.jsonl": ("openbookqa", 500),
        "truthfulqa/TruthfulQA.csv": ("truthfulqa", 817),
        "mwe/advanced-ai-risk/power-seeking-inclination.jsonl": ("mwe", 1000),
        "mwe/persona/openness.jsonl": ("mwe", 1000),
    }
    for rel, (fmt, n) in cases.items():
        assert detect_format(root / rel) == fmt
        assert len(load_task(root / rel)) == n
        assert len(load_task(str(root / rel))) == n
    with pytest.raises(DatasetError, match="unknown dataset format"):
        load_task(root / "ood/choice-qa/practical/openness-short.json")


# --------------------------------------------------------------------------- OOD and corpus


@needs_data
def test_load_ood_file(root: Path) -> None:
    prompts = load_ood(root / "ood/open-ended/practical/openness-short.json")
    assert [p.id for p in prompts] == list(range(1, 11))
    assert all(p.criteria for p in prompts) and prompts[0].source == "openness-short"
    assert all(p.criteria is None for p in load_ood(root / "ood/choice-qa/practical/openness-long.json"))


@needs_data
@pytest.mark.parametrize("kind", ["choice-qa", "open-ended"])
@pytest.mark.parametrize("behaviour", sorted(CAE_BEHAVIOURS))
def test_load_ood_dir_all_cae_behaviours(root: Path, kind: str, behaviour: str) -> None:
    # Also finds open-ended/safety/corrigible-neutral-HHH-neutral-HHH-medium.json (odd upstream name).
    by_length = load_ood_dir(root, kind, behaviour=behaviour)  # type: ignore[arg-type]
    assert list(by_length) == ["short", "medium", "long"]
    assert all(len(v) == 10 for v in by_length.values())
    # the ood folder itself is accepted as root too
    assert load_ood_dir(root / "ood", kind, behaviour=behaviour) == by_length  # type: ignore[arg-type]


@needs_data
def test_load_ood_dir_unknown(root: Path) -> None:
    assert "sycophancy" in list_ood_behaviours(root, "open-ended")
    with pytest.raises(DatasetError, match="no choice-qa OOD prompts for behaviour 'sycophancy'; available: .*openness"):
        load_ood_dir(root, "choice-qa", behaviour="sycophancy")


@needs_data
def test_load_corpus(root: Path) -> None:
    text = load_corpus(root / "corpus/wikitext-2-test.txt")
    assert len(text) > 1_000_000 and "<unk>" in text
    assert load_corpus(root / "corpus/wikitext-2-test.txt", max_chars=500) == text[:500]


# --------------------------------------------------------------------------- PAS prompt and shuffle


def test_format_mc_prompt_exact() -> None:
    item = MCItem("Who is rude?", ("The British friend", "The Japanese friend", "Can't answer"), 2,
                  context="Two friends came.", source="t", index=0)
    assert format_mc_prompt(item, (2, 0, 1)) == (
        "Two friends came.\nWho is rude?\nA: Can't answer\nB: The British friend\nC: The Japanese friend\n"
        "Respond with a single letter.\nAnswer:"
    )
    assert gold_letter(item, (2, 0, 1)) == "A"
    assert gold_letter(item, (0, 1, 2)) == "C"
    assert [letter_choice(item, (2, 0, 1), x) for x in "ABC"] == [2, 0, 1]
    plain = MCItem("Q?", ("x", "y"), 0)
    assert format_mc_prompt(plain, (0, 1)) == "Q?\nA: x\nB: y\nRespond with a single letter.\nAnswer:"
    with pytest.raises(DatasetError, match="not a permutation"):
        format_mc_prompt(plain, (0, 0))


@needs_data
def test_shuffle_spreads_gold_over_letters(nationality: list[MCItem]) -> None:
    items = nationality[:200]
    shuffled = shuffle_choices(items, seed=0)
    assert [it for it, _ in shuffled] == items
    letters = collections.Counter(gold_letter(it, order) for it, order in shuffled)
    assert set(letters) == {"A", "B", "C"}
    assert min(letters.values()) >= 40, letters  # ~67 expected each
    # Each question gets its own permutation (the PAS reference re-seeds and gives all the same one).
    assert len({order for _, order in shuffled}) == 6
    assert shuffle_choices(items, seed=0) == shuffled
    assert [o for _, o in shuffle_choices(items, seed=1)] != [o for _, o in shuffled]
    # The gold text is shown under the gold letter.
    for it, order in shuffled[:20]:
        prompt = format_mc_prompt(it, order)
        assert f"\n{gold_letter(it, order)}: {it.gold_text}\n" in prompt


def test_records_are_hashable_and_typed() -> None:
    item = MCItem("q", ["a", "b"], 1, meta=(("k", "v"),))  # type: ignore[arg-type]
    assert item.choices == ("a", "b") and hash(item) == hash(MCItem("q", ("a", "b"), 1, meta=(("k", "v"),)))
    b = BehaviourItem("q", "A", "B", "ab", "s", 0)
    assert {b, b} == {b}
