"""Benchmark loading: every shared data file, each source's quirks, bad input, and prompts."""

import dataclasses
import json
from pathlib import Path

import pytest

from caspo_jax.data.grading import grade
from caspo_jax.data.prompts import INSTRUCTION, build_prompt, plain_prompt
from caspo_jax.data.sources import BENCHMARKS, Problem, load_benchmark, load_jsonl_problems

DATA = Path(__file__).parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared benchmark data not found at {DATA}")

# (benchmark, file under DATA, split)
SHARED = [
    ("gsm8k", "gsm8k/test.jsonl", "test"),
    ("gsm8k", "gsm8k/train.jsonl", "train"),
    ("math", "math/test.jsonl", "test"),
    ("math", "math_train/train.jsonl", "train"),
    ("math500", "math500/test.jsonl", "test"),
    ("aime24", "aime24/test.jsonl", "test"),
    ("aime25", "aime25/test.jsonl", "test"),
    ("aime25", "aime25/test_amd.jsonl", "test"),
    ("amc23", "amc23/test.jsonl", "test"),
    ("minerva_math", "minerva_math/test.jsonl", "test"),
    ("olympiadbench", "olympiadbench/test.jsonl", "test"),
    ("svamp", "svamp/test.jsonl", "test"),
    ("strategyqa", "strategyqa/task.json", "test"),
]


def _count_records(file: Path) -> int:
    if file.suffix == ".json":
        return len(json.loads(file.read_text())["examples"])
    return sum(1 for line in file.read_text().splitlines() if line.strip())


@needs_data
@pytest.mark.parametrize("name, rel, split", SHARED)
def test_shared_benchmarks_load(name, rel, split):
    file = DATA / rel
    expected = _count_records(file)
    if rel == "math_train/train.jsonl":  # two solutions end in an empty \boxed{}: skipped, with a warning
        expected -= file.read_text().count("\\\\boxed{}")
        with pytest.warns(UserWarning, match="skipped 2 record"):
            problems = load_benchmark(name, file.parent, split=split)
    else:
        problems = load_benchmark(name, file if file.parent.name == "aime25" else file.parent, split=split)
    assert len(problems) == expected
    assert all(p.question.strip() and p.answer.strip() for p in problems)
    assert len({p.id for p in problems}) == len(problems)


def test_every_registered_benchmark_is_in_the_shared_list():
    assert {name for name, _, _ in SHARED} == set(BENCHMARKS)


@needs_data
def test_known_gold_answers():
    first = {n: load_benchmark(n, DATA / d, limit=1)[0].answer for n, d in [
        ("gsm8k", "gsm8k"), ("math", "math"), ("amc23", "amc23"), ("svamp", "svamp"),
        ("minerva_math", "minerva_math"), ("strategyqa", "strategyqa")]}
    assert first == {"gsm8k": "18", "math": "2", "amc23": "27", "svamp": "145",
                     "minerva_math": "1.6", "strategyqa": "yes"}
    aime24 = load_benchmark("aime24", DATA / "aime24")
    assert [p.answer for p in aime24[:8]] == ["204", "113", "371", "385", "110", "104", "721", "25"]
    aime25 = ("70 588 16 117 279 504 821 77 62 81 259 510 204 60 735 "  # as listed in aime25/SOURCE.md
              "468 49 82 106 336 293 237 610 149 907 113 19 248 104 240")
    assert [p.answer for p in load_benchmark("aime25", DATA / "aime25")] == aime25.split()
    olympiad = {p.id: p.answer for p in load_benchmark("olympiadbench", DATA / "olympiadbench")}
    assert olympiad["1664"] == "69,84" and olympiad["2349"] == "221,8"


@needs_data
def test_reference_solutions_grade_correct():
    """MATH500's `answer` field is independent of its solution text; GSM8K's raw answer text ends in
    "#### n". Both must grade correct against the loaded gold answers."""
    math500 = load_benchmark("math500", DATA / "math500")
    assert all(grade(p.solution, p.answer) for p in math500)
    raw = [json.loads(line)["answer"] for line in (DATA / "gsm8k" / "test.jsonl").read_text().splitlines()]
    assert all(grade(text, p.answer) for text, p in zip(raw, load_benchmark("gsm8k", DATA / "gsm8k")))


def _write(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_source_quirks(tmp_path):
    math = _write(tmp_path / "math.jsonl", [
        {"problem": "p", "solution": "so $\\boxed{\\frac{1}{\\sqrt{2}}}$ and \\boxed{\\{1, 2\\}}."},
        {"problem": "q", "solution": "our answer is $\\boxed 9$."},
        {"problem": "r", "answer": "009"},
        {"problem": "s", "answer": 27.0},
    ])
    assert [p.answer for p in load_benchmark("math", math)] == ["\\{1, 2\\}", "9", "9", "27"]
    gsm = _write(tmp_path / "gsm.jsonl", [{"question": "q", "answer": "a <<1+1=2>>\n#### 1,234"}])
    assert load_benchmark("gsm8k", gsm)[0] == Problem("0", "q", "1234", "a <<1+1=2>>")
    svamp = _write(tmp_path / "svamp.jsonl", [
        {"Body": "Tom has 3 apples", "Question": "How many?", "Answer": 8.0}])
    assert load_benchmark("svamp", svamp)[0].question == "Tom has 3 apples. How many?"
    assert load_benchmark("svamp", svamp)[0].answer == "8"
    olympiad = _write(tmp_path / "ob.jsonl", [
        {"id": 7, "question": "q", "final_answer": ["$(1,2)$", "$3$"], "solution": ["a", "b"],
         "context": None}])
    assert load_benchmark("olympiadbench", olympiad)[0] == Problem("7", "q", "(1,2), 3", "a\n\nb")
    strategy = tmp_path / "task.json"
    strategy.write_text(json.dumps(
        {"examples": [{"input": "q?", "target": "No. x", "target_scores": {"Yes": 0, "No": 1}}]}))
    assert load_benchmark("strategyqa", tmp_path).pop().answer == "no"  # found as task.json in the folder
    hub_style = _write(tmp_path / "sqa.jsonl", [{"qid": "a1", "question": "q?", "answer": True}])
    assert load_benchmark("strategyqa", hub_style)[0] == Problem("a1", "q?", "yes", None)


def test_limit_and_split_lookup(tmp_path):
    _write(tmp_path / "train.jsonl", [{"problem": f"p{i}", "answer": str(i)} for i in range(5)])
    assert [p.answer for p in load_benchmark("math500", tmp_path, split="train", limit=2)] == ["0", "1"]
    with pytest.raises(FileNotFoundError, match="test.jsonl"):
        load_benchmark("math500", tmp_path)


def test_problem_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Problem("1", "q", "a").answer = "b"


def test_bad_input_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown benchmark 'gsm9k'.*aime24.*strategyqa"):
        load_benchmark("gsm9k", tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        load_benchmark("math500", tmp_path / "nowhere.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="empty.jsonl: no records"):
        load_benchmark("math500", empty)
    missing = _write(tmp_path / "missing.jsonl", [{"problem": "p", "answer": "1"}, {"answer": "2"}])
    with pytest.raises(ValueError, match=r"missing.jsonl:2: missing field 'problem' or 'question'"):
        load_benchmark("math500", missing)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"problem": "p", "answer": "1"}\n\n{"problem": oops}\n')
    with pytest.raises(ValueError, match=r"broken.jsonl:3: not valid JSON"):
        load_benchmark("math500", broken)
    no_box = _write(tmp_path / "nobox.jsonl", [{"problem": "p", "solution": "no box"}])
    with pytest.raises(ValueError, match=r"nobox.jsonl:1: no 'answer' field and no \\boxed"):
        load_benchmark("math", no_box)
    no_marker = _write(tmp_path / "gsm.jsonl", [{"question": "q", "answer": "42"}])
    with pytest.raises(ValueError, match=r"gsm.jsonl:1: .*'#### <final answer>'"):
        load_benchmark("gsm8k", no_marker)
    not_list = tmp_path / "task.json"
    not_list.write_text('{"data": 1}')
    with pytest.raises(ValueError, match="task.json: expected a list"):
        load_benchmark("strategyqa", not_list)


def test_load_jsonl_problems(tmp_path):
    file = _write(tmp_path / "custom.jsonl", [
        {"q": "one?", "a": 1.0, "why": "because"}, {"q": "two?", "a": False, "why": "so"}])
    assert load_jsonl_problems(file, "q", "a", "why") == [
        Problem("0", "one?", "1", "because"), Problem("1", "two?", "no", "so")]
    with pytest.raises(ValueError, match=r"custom.jsonl:1: missing field 'answer'"):
        load_jsonl_problems(file, "q", "answer")
    with pytest.raises(FileNotFoundError, match="absent.jsonl"):
        load_jsonl_problems(tmp_path / "absent.jsonl", "q", "a")


def test_prompts_ask_for_blank_line_steps_and_a_boxed_answer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]")
    assert "blank line" in INSTRUCTION and "\\boxed{}" in INSTRUCTION
    assert build_prompt(" What is 2+2? ", tokenizer) == plain_prompt("What is 2+2?")
    assert plain_prompt("What is 2+2?") == f"Problem:\nWhat is 2+2?\n\n{INSTRUCTION}\n\nSolution:\n"
    tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    assert build_prompt("What is 2+2?", tokenizer, system="Be brief.") == (
        f"<|system|>Be brief.\n<|user|>What is 2+2?\n\n{INSTRUCTION}\n<|assistant|>"
    )
