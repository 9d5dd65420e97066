"""steerlab.data loaders on small hand-written files: formats, and the exact error messages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from steerlab.data import (
    BehaviourItem,
    ContrastPair,
    MCItem,
    default_data_root,
    detect_format,
    format_mc_prompt,
    load_arc,
    load_bbq,
    load_corpus,
    load_ethics,
    load_hf_mc,
    load_lsat,
    load_mc_csv,
    load_mc_jsonl,
    load_mmlu,
    load_mwe,
    load_mwe_mc,
    load_ood,
    load_pairs,
    load_task,
    load_truthfulqa_mc,
    read_csv,
    shuffle_choices,
    split_ab_question,
)
from steerlab.data import mc_formats as mc_module
from steerlab.errors import DatasetError


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- io


def test_invalid_json_reports_line(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "p.jsonl", [{"positive": "a", "negative": "b"}, "", '{"positive": "a", "negative": '])
    with pytest.raises(DatasetError, match=r"p\.jsonl, line 3: invalid JSON"):
        load_pairs(p)


def test_non_object_line(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "p.jsonl", [{"positive": "a", "negative": "b"}, [1, 2]])
    with pytest.raises(DatasetError, match=r"line 2: expected a JSON object, got list"):
        load_pairs(p)


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_files(tmp_path: Path, content: str) -> None:
    for name, loader in [("a.jsonl", load_pairs), ("b.jsonl", load_mwe), ("c.jsonl", load_bbq),
                         ("d.csv", load_truthfulqa_mc), ("e.json", load_ood), ("f.txt", load_corpus)]:
        p = tmp_path / name
        p.write_text(content)
        with pytest.raises(DatasetError, match=rf"{name}: .*(empty|no records)"):
            loader(p)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"nope\.jsonl: file not found"):
        load_pairs(tmp_path / "nope.jsonl")
    with pytest.raises(DatasetError, match="file not found"):
        load_task(tmp_path / "nope.jsonl")


def test_invalid_utf8_reports_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.jsonl"
    p.write_bytes(b'{"positive": "a", "negative": "b"}\n{"positive": "\xff", "negative": "b"}\n')
    with pytest.raises(DatasetError, match=r"bad\.jsonl, line 2: not valid UTF-8"):
        load_pairs(p)


def test_csv_line_numbers_with_multiline_cells(tmp_path: Path) -> None:
    p = tmp_path / "m.csv"
    p.write_text('question,A,B,answer\n"two\nlines",x,y,A\nq2,x,y\n', encoding="utf-8")
    with pytest.raises(DatasetError, match=r"m\.csv, line 4: expected 4 cells \(header\), got 3"):
        read_csv(p)
    p.write_text("question,A,B,answer\n")
    with pytest.raises(DatasetError, match=r"no data rows \(only a header\)"):
        read_csv(p)


def test_default_data_root_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STEERLAB_DATA", str(tmp_path))
    assert default_data_root() == tmp_path
    monkeypatch.delenv("STEERLAB_DATA")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "shared" / "data").mkdir(parents=True)
    assert default_data_root() == (tmp_path / "shared" / "data").resolve()


# --------------------------------------------------------------------------- pairs


def test_load_pairs_ok(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Hi", "positive": "Love", "negative": "Hate"},
                                          {"positive": "a", "negative": "b"}])
    assert load_pairs(p) == [ContrastPair("Hi", "Love", "Hate"), ContrastPair("", "a", "b")]


@pytest.mark.parametrize(
    "row,message",
    [
        ({"prompt": "x", "positive": "a"}, r"line 2: missing field 'negative'"),
        ({"positive": 1, "negative": "b"}, r"line 2: field 'positive' must be a string, got int"),
        ({"positive": "a", "negative": " "}, r"line 2: field 'negative' is empty"),
        ({"prompt": 3, "positive": "a", "negative": "b"}, r"line 2: field 'prompt' must be a string"),
        ({"positive": "same", "negative": "same"}, r"line 2: 'positive' and 'negative' are identical"),
    ],
)
def test_load_pairs_errors(tmp_path: Path, row: dict, message: str) -> None:
    p = write_jsonl(tmp_path / "p.jsonl", [{"positive": "a", "negative": "b"}, row])
    with pytest.raises(DatasetError, match=message):
        load_pairs(p)


# --------------------------------------------------------------------------- MWE

AB = {"question": "Q?\n\nChoices:\n (A) yes\n (B) no", "answer_matching_behavior": " (A)",
      "answer_not_matching_behavior": " (B)"}
YN = {"question": "Say it?", "answer_matching_behavior": " No", "answer_not_matching_behavior": " Yes"}


def test_load_mwe_formats(tmp_path: Path) -> None:
    items = load_mwe(write_jsonl(tmp_path / "beh.jsonl", [AB, {**AB, "answer_matching_behavior": "(B)",
                                                                 "answer_not_matching_behavior": "(A)"}]))
    assert items == [BehaviourItem(AB["question"], "A", "B", "ab", "beh", 0),
                     BehaviourItem(AB["question"], "B", "A", "ab", "beh", 1)]
    yn = load_mwe(write_jsonl(tmp_path / "p.jsonl", [YN]))
    assert yn[0].kind == "yesno" and yn[0].to_pair() == ContrastPair("Say it?", "No", "Yes")
    # a JSON list (CAA repository layout) works too
    (tmp_path / "l.json").write_text(json.dumps([AB]))
    assert load_mwe(tmp_path / "l.json")[0].matching == "A"


@pytest.mark.parametrize(
    "row,message",
    [
        ({"question": "q", "answer_matching_behavior": " (A)"}, r"line 2: missing field 'answer_not_matching_behavior'"),
        ({**AB, "answer_matching_behavior": " Maybe"}, r"line 2: unknown answer format in 'answer_matching_behavior': ' Maybe'"),
        (YN, r"line 2: answer ' No' is Yes/No but the file's first row is A/B"),
        ({**AB, "answer_not_matching_behavior": " (A)"}, r"line 2: matching and not-matching answers are both ' \(A\)'"),
        ({**AB, "answer_not_matching_behavior": " No"}, r"line 2: answers mix formats"),
        ({**AB, "question": 5}, r"line 2: field 'question' must be a string"),
    ],
)
def test_load_mwe_errors(tmp_path: Path, row: dict, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        load_mwe(write_jsonl(tmp_path / "m.jsonl", [AB, row]))


def test_load_mwe_unknown_file_format(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "bbq.jsonl", [{"context": "c", "question": "q", "ans0": "a", "label": 0}])
    with pytest.raises(DatasetError, match=r"bbq\.jsonl, line 1: not a Model-Written-Evaluations file"):
        load_mwe(p)
    with pytest.raises(DatasetError, match="not a Model-Written-Evaluations file"):
        load_mwe_mc(p)


def test_split_ab_question_edge_cases() -> None:
    # earlier inline "(A)"/"(B)" mentions and a trailing "Answer:" are ignored
    stem, texts, letters = split_ab_question(
        "Pick (A) or (B)?\n\nChoices:\n (A) first\n line two\n (B) second\n\nAnswer:"
    )  # type: ignore[misc]
    assert (stem, texts, letters) == ("Pick (A) or (B)?", ["first line two", "second"], ["A", "B"])
    assert split_ab_question("Rather (A) this or (B) that?")[1:] == (["this or", "that?"], ["A", "B"])  # type: ignore[index]
    assert split_ab_question("no choices here") is None
    three = split_ab_question("Q\n (A) x\n (B) y\n (C) z")
    assert three is not None and three[1] == ["x", "y", "z"]


def test_load_mwe_mc_errors(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "s.jsonl", [AB, {**AB, "question": "no choices"}])
    with pytest.raises(DatasetError, match=r"s\.jsonl, line 2: cannot find the '\(A\) \.\.\.' / '\(B\) \.\.\.' choices"):
        load_mwe_mc(p)
    p = write_jsonl(tmp_path / "t.jsonl", [{**AB, "answer_matching_behavior": " (C)"}])
    with pytest.raises(DatasetError, match=r"line 1: matching answer \(C\) is not among the parsed choices"):
        load_mwe_mc(p)
    # sycophancy-style: several non-matching letters
    row = {"question": "Q\n (A) a\n (B) b\n (C) c\n\nAnswer:", "answer_matching_behavior": " (C)",
           "answer_not_matching_behavior": [" (A)", " (B)"]}
    (item,) = load_mwe_mc(write_jsonl(tmp_path / "u.jsonl", [row]))
    assert item.choices == ("a", "b", "c") and item.gold == 2


# --------------------------------------------------------------------------- generic MC


def test_mc_jsonl_answer_forms(tmp_path: Path) -> None:
    rows = [
        {"q": "1", "c": ["x", "y", "z"], "a": 2},            # index
        {"q": "2", "c": ["x", "y", "z"], "a": "B"},          # letter
        {"q": "3", "c": ["x", "y", "z"], "a": "(c)"},        # letter in parentheses
        {"q": "4", "c": ["x", "y", "z"], "a": "y"},          # choice text
        {"q": "5", "c": ["x", "y", "z"], "a": "1"},          # digit string -> 0-based index
        {"q": "6", "c": {"text": ["x", "y"], "label": ["1", "2"]}, "a": "2"},  # label wins
        {"q": "7", "c": [{"text": "x", "label": "P"}, {"text": "y", "label": "Q"}], "a": "P"},
        {"q": "8", "c": ["A", "B"], "a": "B"},                # text first, consistent with letter
    ]
    items = load_mc_jsonl(write_jsonl(tmp_path / "g.jsonl", rows), question="q", choices="c", answer="a")
    assert [it.gold for it in items] == [2, 1, 2, 1, 1, 1, 0, 1]
    assert items[0].source == "g" and [it.index for it in items] == list(range(8))


def test_mc_jsonl_nested_fields_and_context(tmp_path: Path) -> None:
    row = {"q": {"stem": "S"}, "ctx": "C", "opts": ["a", "b"], "gold": "b"}
    (item,) = load_mc_jsonl(write_jsonl(tmp_path / "n.jsonl", [row]), "q.stem", "opts", "gold", context="ctx")
    assert (item.question, item.context, item.gold) == ("S", "C", 1)
    (item,) = load_mc_jsonl(write_jsonl(tmp_path / "f.jsonl", [{"question": "Q", "o1": "a", "o2": "b", "answer": 0}]),
                            choices=("o1", "o2"))
    assert item.choices == ("a", "b")


@pytest.mark.parametrize(
    "row,message",
    [
        ({"question": "Q", "choices": ["x", "y"], "answer": "w"}, r"line 2: gold answer 'w' is not among the choices \('x'; 'y'\)"),
        ({"question": "Q", "choices": ["x", "y"], "answer": "D"}, r"line 2: gold answer 'D' is not among the choices \('x'; 'y'\) as an index, a letter \(A-B\) or a choice text"),
        ({"question": "Q", "choices": ["x", "y"], "answer": 5}, r"line 2: gold answer 5 is out of range for 2 choices"),
        ({"question": "Q", "choices": ["x", "y"], "answer": True}, r"line 2: gold answer must be an index, a letter or a choice text"),
        ({"question": "Q", "choices": ["x", "x"], "answer": 0}, r"line 2: duplicate choice 'x' \(choices 0 and 1\)"),
        ({"question": "Q", "choices": ["x"], "answer": 0}, r"line 2: needs at least 2 choices, got 1"),
        ({"question": "Q", "choices": "x", "answer": 0}, r"line 2: needs at least 2 choices"),
        ({"question": "Q", "choices": ["x", 3], "answer": 0}, r"line 2: field 'choices': choice 1 must be a string"),
        ({"question": "Q", "answer": 0}, r"line 2: missing field 'choices'"),
        ({"choices": ["x", "y"], "answer": 0}, r"line 2: missing field 'question'"),
    ],
)
def test_mc_jsonl_errors(tmp_path: Path, row: dict, message: str) -> None:
    ok = {"question": "Q", "choices": ["x", "y"], "answer": 0}
    with pytest.raises(DatasetError, match=message):
        load_mc_jsonl(write_jsonl(tmp_path / "e.jsonl", [ok, row]))


def test_mc_skip_invalid(tmp_path: Path) -> None:
    ok = {"question": "Q", "choices": ["x", "y"], "answer": 0}
    p = write_jsonl(tmp_path / "e.jsonl", [ok, {**ok, "answer": "w"}, ok])
    with pytest.warns(UserWarning, match=r"skipped 1 invalid record\(s\) \(line 2\)"):
        assert [it.index for it in load_mc_jsonl(p, skip_invalid=True)] == [0, 2]


def test_answer_format_forced(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "d.jsonl", [{"question": "Q", "choices": ["1", "0"], "answer": "1"}])
    assert load_mc_jsonl(p)[0].gold == 0  # auto: choice text first
    assert load_mc_jsonl(p, answer_format="index")[0].gold == 1


def test_mc_csv(tmp_path: Path) -> None:
    p = tmp_path / "g.csv"
    p.write_text("question,A,B,C,D,answer,ctx\nQ1,a,b,c,,B,C1\nQ2,a,b,c,d,d,C2\n", encoding="utf-8")
    items = load_mc_csv(p, context="ctx")
    assert [it.choices for it in items] == [("a", "b", "c"), ("a", "b", "c", "d")]  # empty cell dropped
    assert [it.gold for it in items] == [1, 3] and items[0].context == "C1"
    p.write_text("question,A,B,C,D,answer\nQ1,a,b,c,,D\n")
    with pytest.raises(DatasetError, match=r"line 2: gold answer 'D' points at an empty choice"):
        load_mc_csv(p)
    p.write_text('q,opts,a\nQ1,"x; y; z",z\nQ2,"[""u"", ""v""]",0\n')
    items = load_mc_csv(p, question="q", choices="opts", answer="a")
    assert [(it.choices, it.gold) for it in items] == [(("x", "y", "z"), 2), (("u", "v"), 0)]
    p.write_text("Q1,a,b,1\n")
    (item,) = load_mc_csv(p, question=0, choices=(1, 2), answer=3, header=False)
    assert item.gold == 1


def test_mcitem_validation_names_source_and_index() -> None:
    with pytest.raises(DatasetError, match=r"bbq item 7: gold index 3 out of range for 3 choices"):
        MCItem("q", ("a", "b", "c"), 3, source="bbq", index=7)
    with pytest.raises(DatasetError, match=r"src item 2: duplicate choice 'a'"):
        MCItem("q", ("a", "a"), 0, source="src", index=2)
    with pytest.raises(DatasetError, match=r"MCItem item 0: needs at least 2 choices"):
        MCItem("q", ("a",), 0)
    with pytest.raises(DatasetError, match="identical"):
        ContrastPair("", "x", "x")
    with pytest.raises(DatasetError, match="single capital letter"):
        BehaviourItem("q", "Yes", "No", "ab", "s", 0)


def test_too_many_choices_for_letters() -> None:
    item = MCItem("q", tuple(f"c{i}" for i in range(27)), 0, source="big", index=4)
    with pytest.raises(DatasetError, match=r"big item 4: 27 choices but only 26 answer letters"):
        format_mc_prompt(item, range(27))
    with pytest.raises(DatasetError, match=r"big item 4: 27 choices but only 26 answer letters"):
        shuffle_choices([item], seed=0)


# --------------------------------------------------------------------------- adapters

BBQ_ROW = {"example_id": 0, "question_polarity": "neg", "context_condition": "ambig", "category": "Age",
           "answer_info": {"ans0": ["old", "old"], "ans1": ["young", "nonOld"], "ans2": ["Unknown", "unknown"]},
           "context": "C", "question": "Q?", "ans0": "The old", "ans1": "The young", "ans2": "Unknown", "label": 2}


def test_bbq_adapter(tmp_path: Path) -> None:
    (item,) = load_bbq(write_jsonl(tmp_path / "Age.jsonl", [BBQ_ROW]))
    assert (item.context, item.question, item.gold) == ("C", "Q?", 2)
    assert item.meta_dict() == {"category": "Age", "context_condition": "ambig", "question_polarity": "neg",
                                "example_id": "0", "unknown_choice": "2"}
    hf = {k: v for k, v in BBQ_ROW.items() if k != "label"} | {"answer_label": 1}
    assert load_bbq(write_jsonl(tmp_path / "hf.jsonl", [hf]))[0].gold == 1
    with pytest.raises(DatasetError, match=r"line 2: gold answer 3 is out of range for 3 choices"):
        load_bbq(write_jsonl(tmp_path / "bad.jsonl", [BBQ_ROW, {**BBQ_ROW, "label": 3}]))
    with pytest.raises(DatasetError, match=r"line 1: missing field 'ans1'"):
        load_bbq(write_jsonl(tmp_path / "bad2.jsonl", [{k: v for k, v in BBQ_ROW.items() if k != "ans1"}]))


def test_truthfulqa_adapter(tmp_path: Path) -> None:
    p = tmp_path / "tqa.csv"
    header = "Type,Category,Question,Best Answer,Correct Answers,Incorrect Answers,Source\n"
    p.write_text(header + 'A,M,Q?,Best,Best; Good,"Bad; ; Bad;Worse; Best",src\n', encoding="utf-8")
    (item,) = load_truthfulqa_mc(p)
    assert item.choices == ("Best", "Bad", "Worse") and item.gold == 0
    p.write_text(header + "A,M,Q?,Best,Best,,src\n")
    with pytest.raises(DatasetError, match=r"tqa\.csv, line 2: no incorrect answer left"):
        load_truthfulqa_mc(p)
    hf = {"question": "Q?", "mc1_targets": {"choices": ["r", "w1", "w2"], "labels": [1, 0, 0]}}
    assert load_truthfulqa_mc(write_jsonl(tmp_path / "tqa.jsonl", [hf]))[0].gold == 0
    bad = {"question": "Q?", "mc1_targets": {"choices": ["r", "w1"], "labels": [1, 1]}}
    with pytest.raises(DatasetError, match="exactly one correct choice"):
        load_truthfulqa_mc(write_jsonl(tmp_path / "bad.jsonl", [bad]))


def test_arc_adapter_numeric_labels(tmp_path: Path) -> None:
    rows = [{"id": "x", "question": "Q?", "choices": {"text": ["a", "b", "c", "d"], "label": ["1", "2", "3", "4"]},
             "answerKey": "3"},
            {"id": "y", "question": "Q2?", "choices": {"text": ["a", "b", "c"], "label": ["A", "B", "C"]},
             "answerKey": "C"}]
    items = load_arc(write_jsonl(tmp_path / "arc.jsonl", rows))
    assert [it.gold for it in items] == [2, 2]
    assert detect_format(tmp_path / "arc.jsonl") == "arc"
    with pytest.raises(DatasetError, match=r"line 1: gold answer 'E' is not among the choice labels"):
        load_arc(write_jsonl(tmp_path / "bad.jsonl", [{**rows[1], "answerKey": "E"}]))


def test_ethics_adapter(tmp_path: Path) -> None:
    cm = tmp_path / "cm_test.csv"
    cm.write_text("label,input,is_short,edited\n1,I kicked the dog.,True,False\n0,I fed the dog.,True,False\n")
    items = load_ethics(cm, "commonsense")
    assert [it.gold_text for it in items] == ["wrong", "not wrong"]
    assert items[0].context == "I kicked the dog." and items[0].choices == ("not wrong", "wrong")
    assert load_ethics(cm) == items and detect_format(cm) == "ethics-commonsense"
    de = tmp_path / "deontology_test.csv"
    de.write_text("label,scenario,excuse\n1,Can you help me?,But I am busy.\n")
    (d,) = load_ethics(de, "deontology")
    assert d.gold_text == "reasonable" and d.context == "Scenario: Can you help me?\nExcuse: But I am busy."
    ju = tmp_path / "justice_test.csv"
    ju.write_text("label,scenario\n0,I deserve a medal because I ate lunch.\n")
    assert load_ethics(ju, "justice")[0].gold_text == "unreasonable"
    assert len(load_task(ju)) == 1
    with pytest.raises(DatasetError, match="columns look like ETHICS commonsense, not justice"):
        load_ethics(cm, "justice")
    with pytest.raises(DatasetError, match="unknown ETHICS subset 'virtue'"):
        load_ethics(ju, "virtue")  # type: ignore[arg-type]
    ju.write_text("label,scenario\n2,x\n")
    with pytest.raises(DatasetError, match=r"justice_test\.csv, line 2: label must be 0 or 1, got '2'"):
        load_ethics(ju)


def test_mmlu_adapter(tmp_path: Path) -> None:
    p = tmp_path / "abstract_algebra_test.csv"
    p.write_text('What is 1+1?,1,2,3,4,B\n"Find, x",a,b,c,d,D\n')
    items = load_mmlu(p)
    assert [it.gold for it in items] == [1, 3] and items[1].question == "Find, x"
    assert items[0].meta_dict() == {"subject": "abstract_algebra"}
    assert detect_format(p) == "mmlu" and len(load_task(p)) == 2
    j = write_jsonl(tmp_path / "mmlu.jsonl", [{"question": "Q", "subject": "law", "choices": ["a", "b", "c", "d"], "answer": 3}])
    assert load_mmlu(j)[0].gold == 3 and load_mmlu(j)[0].meta_dict() == {"subject": "law"}
    p.write_text("only,three,cols\n")
    with pytest.raises(DatasetError, match="expected 6 columns"):
        load_mmlu(p)


def test_lsat_adapter(tmp_path: Path) -> None:
    hails = {"query": "Q: Passage text. Which must be true? Answer Choices: (A)x (B)y (C)z\n"
                      "A: Among A through C, the answer is", "choices": ["(A)x", "(B)y", "(C)z"], "gold": [1]}
    (item,) = load_lsat(write_jsonl(tmp_path / "lsat.jsonl", [hails]))
    assert item.question == "Passage text. Which must be true?" and item.choices == ("x", "y", "z") and item.gold == 1
    orig = {"passage": "P", "question": "Q?", "options": ["(A)a", "(B)b"], "label": "B"}
    (item,) = load_lsat(write_jsonl(tmp_path / "ag.jsonl", [orig]))
    assert (item.context, item.choices, item.gold) == ("P", ("a", "b"), 1)


def test_detect_format_unknown(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "x.jsonl", [{"foo": 1}])
    with pytest.raises(DatasetError, match=r"x\.jsonl, line 1: unknown dataset format \(fields: foo\)"):
        detect_format(p)
    c = tmp_path / "x.csv"
    c.write_text("a,b\n1,2\n")
    with pytest.raises(DatasetError, match="unknown CSV format"):
        detect_format(c)


def test_load_hf_mc_without_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    real = mc_module.importlib.import_module

    def fake(name: str, *args: Any) -> Any:
        if name == "datasets":
            raise ImportError("No module named 'datasets'")
        return real(name, *args)

    monkeypatch.setattr(mc_module.importlib, "import_module", fake)
    with pytest.raises(DatasetError, match=r"needs the Hugging Face `datasets` package and a network.*pip install datasets"):
        load_hf_mc("cais/mmlu", "test", "all")


def test_load_hf_mc_with_fake_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    class FakeDatasets:
        @staticmethod
        def load_dataset(name: str, config: str | None, split: str) -> list[dict]:
            if name == "offline/fail":
                raise ConnectionError("no route to host")
            return [{"question": "Q", "choices": ["a", "b"], "answer": 1}] * 3

    real = mc_module.importlib.import_module
    monkeypatch.setattr(mc_module.importlib, "import_module",
                        lambda name, *a: FakeDatasets if name == "datasets" else real(name, *a))
    items = load_hf_mc("cais/mmlu", "test", "all", limit=2)
    assert len(items) == 2 and items[0].gold == 1
    with pytest.raises(DatasetError, match="could not load 'offline/fail'.*ConnectionError: no route to host"):
        load_hf_mc("offline/fail")


def test_ood_errors(tmp_path: Path) -> None:
    p = tmp_path / "x-short.json"
    p.write_text(json.dumps([{"id": 1, "prompt": "a"}, {"id": "2", "prompt": "b"}]))
    with pytest.raises(DatasetError, match=r"x-short\.json, item 2: field 'id' must be an integer"):
        load_ood(p)
    p.write_text(json.dumps([{"id": 1, "prompt": "a"}, {"id": 1, "prompt": "b"}]))
    with pytest.raises(DatasetError, match=r"item 2: duplicate id 1"):
        load_ood(p)
    p.write_text('[{"id": 1,\n "prompt": }]')
    with pytest.raises(DatasetError, match=r"x-short\.json, line 2: invalid JSON"):
        load_ood(p)
    p.write_text(json.dumps({"id": 1}))
    with pytest.raises(DatasetError, match="expected a JSON list of objects"):
        load_ood(p)
