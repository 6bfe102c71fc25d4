"""LongBench and RULER scoring rules on hand-worked examples, edge cases included."""

from __future__ import annotations

import pytest

from refine_tasks.evaluate.metrics import (
    LONGBENCH_TASK_METRIC,
    classification_score,
    code_sim_score,
    count_score,
    longbench_score,
    normalize_answer,
    qa_f1_score,
    retrieval_score,
    rouge_l_score,
    ruler_qa_score,
    score_sample,
    string_match_all,
    task_score,
)


def test_normalize_answer_lowercases_and_drops_punctuation_articles_and_extra_space():
    assert normalize_answer("  The Cat,  an apple! A-ha.") == "cat apple aha"
    # Articles only as whole words: "theatre" and "another" keep their letters.
    assert normalize_answer("Another theatre") == "another theatre"


def test_qa_f1_hand_worked():
    # pred tokens {eiffel, tower, in, paris}, ref {eiffel, tower}: P = 1/2, R = 1, F1 = 2/3.
    assert qa_f1_score("the Eiffel Tower in Paris", "Eiffel Tower") == pytest.approx(2 / 3)
    assert qa_f1_score("A dog.", "dog") == 1.0  # article and punctuation do not count
    assert qa_f1_score("", "dog") == 0.0  # empty prediction
    assert qa_f1_score("the", "the") == 0.0  # both normalise to nothing: no shared token
    # Repeated tokens count with multiplicity: pred {a1,a1,b} vs ref {a1}: P=1/3, R=1 -> 0.5.
    assert qa_f1_score("x x y", "x") == pytest.approx(0.5)


def test_longbench_score_takes_best_reference_and_first_line_only_where_official():
    assert longbench_score("hotpotqa", "Paris", ["London", "paris."]) == 1.0
    assert longbench_score("hotpotqa", "Paris", []) == 0.0  # no reference: 0, as the official max(0, ...)
    # hotpotqa scores the whole prediction: {paris, london} vs {london}: F1 = 2/3.
    assert longbench_score("hotpotqa", "Paris\nLondon", ["London"]) == pytest.approx(2 / 3)
    # triviaqa scores only the first line after leading newlines.
    assert longbench_score("triviaqa", "\n\nParis\nLondon", ["London"]) == 0.0
    assert longbench_score("triviaqa", "\n\nLondon\nParis", ["London"]) == 1.0
    # samsum (ROUGE-L) likewise: the second line would have matched perfectly.
    assert longbench_score("samsum", "nothing here\nAnn is angry", ["Ann is angry"]) == 0.0
    with pytest.raises(ValueError, match="unknown LongBench task"):
        longbench_score("dureader", "x", ["x"])


def test_rouge_l_hand_worked_and_empty():
    # LCS(cat sat on mat, cat lay on mat) = 3 of 4 words each way: F = 0.75.
    assert rouge_l_score("cat sat on mat", "cat lay on mat") == pytest.approx(0.75, rel=1e-6)
    assert rouge_l_score("", "cat") == 0.0  # the package raises on an empty hypothesis
    assert rouge_l_score("...", "cat") == 0.0  # nothing left after its tokenisation


def test_classification_counts_matches_and_reproduces_the_official_skip():
    assert classification_score("Type: City", "City") == 1.0
    assert classification_score("City or Country", "City") == 0.5  # two classes named
    assert classification_score("Country", "City") == 0.0
    assert classification_score("", "City") == 0.0
    # Official loop: matched [a, b, ab, abc]; removing "a" skips "b" (also a partial match of
    # "abc"), removing "ab" skips nothing that matters: [b, abc] remain, so 1/2 (a clean filter: 1).
    assert classification_score("abc", "abc", all_classes=["a", "b", "ab", "abc"]) == 0.5
    # Here the skip matters: [a, ab, abc] -> remove "a" (skip "ab") -> [ab, abc] -> 1/2,
    # where removing every partial match would give 1.
    assert classification_score("abc", "abc", all_classes=["a", "ab", "abc"]) == 0.5


def test_code_sim_uses_first_code_line_and_fuzz_ratio():
    assert code_sim_score("```python\n# a comment\nx = foo(1)\n", "x = foo(1)") == 1.0
    # difflib ratio of "int y = 2;" and "int y = 3;": 2 * 9 / 20 = 0.9.
    assert code_sim_score("// c\nint y = 2;", "int y = 3;") == pytest.approx(0.9)
    assert code_sim_score("", "x = 1") == 0.0  # empty prediction
    assert code_sim_score("# only comments\n// here", "x = 1") == 0.0  # no code line: ""


def test_count_and_retrieval():
    assert count_score("There are 3 paragraphs, not 4", "3") == 0.5
    assert count_score("none", "3") == 0.0
    assert retrieval_score("Paragraph 12", "Paragraph 12") == 1.0
    assert retrieval_score("Paragraph 1 or Paragraph 12", "Paragraph 12") == 0.5
    with pytest.raises(ValueError, match="Paragraph N"):
        retrieval_score("1", "the first one")


def test_string_match_all_share_of_references_case_insensitive():
    refs = ["1234567", "7654321", "1111111"]
    assert string_match_all("The numbers are 1234567 and 7654321.", refs) == pytest.approx(2 / 3)
    uuid = "9502E877-6148-45bd-8ae2-96125f6d1431"
    assert string_match_all(f" {uuid.lower()}\x07", [uuid]) == 1.0
    assert string_match_all("", refs) == 0.0
    with pytest.raises(ValueError):
        string_match_all("x", [])


def test_ruler_qa_any_reference_in_first_line():
    assert ruler_qa_score("Frank lowy\nsomething else", ["Frank Lowy"]) == 1.0
    assert ruler_qa_score("He was Frank Lowy.", ["Mr Lowy", "frank lowy"]) == 1.0
    assert ruler_qa_score("\n \nFrank Lowy\nno", ["Frank Lowy"]) == 1.0  # leading blank lines skipped
    assert ruler_qa_score("no\nFrank Lowy", ["Frank Lowy"]) == 0.0
    assert ruler_qa_score("", ["Frank Lowy"]) == 0.0


def test_score_sample_dispatch_and_task_score():
    assert score_sample("ruler_qa", "ruler_squadqa", "France", ["France"]) == 1.0
    assert score_sample("longbench", "trec", "City\nCountry", ["City"]) == 1.0
    assert score_sample("string_match_all", "niah_single_1", "7", ["7", "8"]) == 0.5
    with pytest.raises(ValueError, match="unknown metric"):
        score_sample("bleu", "x", "a", ["a"])
    with pytest.raises(ValueError, match="unknown protocol"):
        score_sample("ruler_qa", "x", "a", ["a"], protocol="lenient")
    assert task_score([1.0, 0.0, 0.5]) == 50.0
    assert task_score([1 / 3] * 3) == 33.33
    with pytest.raises(ValueError):
        task_score([])


def test_every_shared_longbench_task_has_an_official_metric():
    shared = ["2wikimqa", "hotpotqa", "lcc", "multi_news", "multifieldqa_en", "narrativeqa"]
    shared += ["qmsum", "repobench-p", "samsum", "trec", "triviaqa"]
    assert {t: LONGBENCH_TASK_METRIC[t] for t in shared} == {
        "2wikimqa": "qa_f1", "hotpotqa": "qa_f1", "lcc": "code_sim", "multi_news": "rouge_l",
        "multifieldqa_en": "qa_f1", "narrativeqa": "qa_f1", "qmsum": "rouge_l",
        "repobench-p": "code_sim", "samsum": "rouge_l", "trec": "classification", "triviaqa": "qa_f1",
    }  # fmt: skip


@pytest.mark.parametrize("protocol", ["official", "paper"])
@pytest.mark.parametrize(
    "metric, task, references",
    [
        ("ruler_qa", "ruler_squadqa", ["Frank Lowy"]),
        ("longbench", "hotpotqa", ["Frank Lowy"]),
        ("longbench", "triviaqa", ["Frank Lowy"]),
        ("longbench", "trec", ["City"]),
    ],
)
def test_leading_blank_lines_never_zero_a_correct_answer(protocol, metric, task, references):
    answer = references[0]
    for prefix in ("", "\n", "\n\n", "\n  \n"):
        assert score_sample(metric, task, f"{prefix}{answer}", references, protocol=protocol) == 1.0, prefix


def test_protocols_differ_where_the_paper_reads_the_first_line_only():
    # RULER's own scorer reads the whole prediction; the paper's reads the first line.
    assert score_sample("ruler_qa", "ruler_squadqa", "no idea\nFrank Lowy", ["Frank Lowy"]) == 1.0
    assert (
        score_sample("ruler_qa", "ruler_squadqa", "no idea\nFrank Lowy", ["Frank Lowy"], protocol="paper")
        == 0.0
    )
    # LongBench's QA tasks: F1 over the whole text officially, over the first line in the paper's.
    text, ref = "Frank Lowy\nwho was born in 1930 in Czechoslovakia", ["Frank Lowy"]
    official = score_sample("longbench", "hotpotqa", text, ref)
    assert 0.0 < official < 1.0
    assert score_sample("longbench", "hotpotqa", text, ref, protocol="paper") == 1.0
