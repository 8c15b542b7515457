"""Benchmarks and training sets: a registry of named sources that all load as `Problem`s.

`load_benchmark(name, path=None, split=None)` reads a local .jsonl/.json file or a folder holding
`<split>.jsonl` (or `<split>.json`, or the source's usual file name), or, with no path, the
Hugging Face dataset the registry names. Each source's converter takes care of its quirks: gold
answers inside the last \\boxed{} of a solution (MATH, Minerva), "#### 1,234" lines (GSM8K),
zero-padded integers (AIME "009" -> "9"), float answers (SVAMP/AMC 8.0 -> "8"), OlympiadBench's
list-valued `final_answer`, StrategyQA's yes/no scores. `load_jsonl_problems` reads any jsonl.
Every bad input fails with the file, the line (or record) and the field at fault.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from caspo_jax.data.grading import last_boxed
from caspo_jax.data import jsonl

_ID_FIELDS = ("unique_id", "id", "idx", "ID", "qid")


@dataclass(frozen=True)
class Problem:
    """One question with its gold answer (a bare answer string) and, when known, a worked solution."""

    id: str
    question: str
    answer: str
    solution: str | None = None


class _RecordError(ValueError):
    """A record that cannot become a Problem; the loader adds where it came from."""


def _field(record: dict[str, Any], *names: str) -> Any:
    """The value of the first of `names` present (and not null) in `record`."""
    for name in names:
        if record.get(name) is not None:
            return record[name]
    raise _RecordError(f"missing field {' or '.join(repr(n) for n in names)}")


def _optional(record: dict[str, Any], *names: str) -> Any:
    return next((record[n] for n in names if record.get(n) is not None), None)


def answer_text(value: Any) -> str:
    """A gold answer as a bare string: booleans -> "yes"/"no", 8.0 -> "8", "009" -> "9",
    lists joined with ", " (each item without its $ delimiters)."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(answer_text(v) for v in value)
    text = re.sub(r"(?<!\\)\$", "", str(value)).strip()
    return str(int(text)) if re.fullmatch(r"[+-]?\d+", text) else text


def _record_id(record: dict[str, Any], index: int) -> str:
    value = _optional(record, *_ID_FIELDS)
    return str(index) if value is None else str(value)


def _math_problem(record: dict[str, Any], index: int) -> Problem:
    """MATH, MATH500, Minerva, AIME, AMC: `answer`, else the last \\boxed{} of `solution`."""
    solution = _optional(record, "solution")
    answer = _optional(record, "answer")
    if answer is None:
        if solution is None:
            raise _RecordError("missing field 'answer' (or a 'solution' with a \\boxed{} answer)")
        answer = last_boxed(str(solution))
        if answer is None:
            raise _RecordError("no 'answer' field and no \\boxed{} answer in 'solution'")
    question = str(_field(record, "problem", "question"))
    return Problem(_record_id(record, index), question, answer_text(answer), solution)


def _gsm8k_problem(record: dict[str, Any], index: int) -> Problem:
    """GSM8K: the answer follows the last "####" of the `answer` text; thousands commas dropped."""
    text = str(_field(record, "answer"))
    if "####" not in text:
        raise _RecordError("field 'answer' has no '#### <final answer>' line")
    worked, final = text.rsplit("####", 1)
    answer = answer_text(final.strip().replace(",", ""))
    return Problem(_record_id(record, index), str(_field(record, "question")), answer, worked.strip())


def _olympiad_problem(record: dict[str, Any], index: int) -> Problem:
    """OlympiadBench: `final_answer` is a list; `solution` a list of texts; optional `context`."""
    question = str(_field(record, "question"))
    context = _optional(record, "context")
    if context:
        question = f"{context}\n\n{question}"
    solution = _optional(record, "solution")
    if isinstance(solution, list):
        solution = "\n\n".join(solution)
    answer = answer_text(_field(record, "final_answer"))
    return Problem(_record_id(record, index), question, answer, solution)


def _svamp_problem(record: dict[str, Any], index: int) -> Problem:
    """SVAMP: the question is `Body` (closed with a period) + `Question`; `Answer` is a float."""
    body = str(_field(record, "Body")).strip()
    if not body.endswith((".", "?", "!")):
        body += "."
    question = f"{body} {str(_field(record, 'Question')).strip()}"
    answer = answer_text(_field(record, "Answer"))
    return Problem(_record_id(record, index), question, answer, _optional(record, "Equation"))


def _strategyqa_problem(record: dict[str, Any], index: int) -> Problem:
    """StrategyQA: BIG-bench `target_scores` {"Yes": 1, "No": 0}, or a boolean `answer` (hub)."""
    question = str(_field(record, "input", "question"))
    scores = _optional(record, "target_scores")
    answer = bool(scores.get("Yes")) if isinstance(scores, dict) else _field(record, "answer")
    if not isinstance(answer, bool):
        raise _RecordError(f"field 'answer' is {answer!r}, expected true or false")
    return Problem(_record_id(record, index), question, answer_text(answer), _optional(record, "target"))


@dataclass(frozen=True)
class Benchmark:
    """A named source: how a record becomes a Problem, and where it lives on the Hugging Face Hub."""

    name: str
    convert: Callable[[dict[str, Any], int], Problem]
    hub_id: str
    hub_config: str | None = None
    hub_split: str = "test"
    file_names: tuple[str, ...] = ()  # tried in a folder after <split>.jsonl and <split>.json


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark("gsm8k", _gsm8k_problem, "openai/gsm8k", "main"),
        Benchmark("math", _math_problem, "DigitalLearningGmbH/MATH-lighteval", "default"),
        Benchmark("math500", _math_problem, "HuggingFaceH4/MATH-500"),
        Benchmark("aime24", _math_problem, "HuggingFaceH4/aime_2024", hub_split="train"),
        Benchmark("aime25", _math_problem, "math-ai/aime25"),
        Benchmark("amc23", _math_problem, "math-ai/amc23"),
        Benchmark("minerva_math", _math_problem, "math-ai/minervamath"),
        Benchmark(
            "olympiadbench", _olympiad_problem, "Hothan/OlympiadBench", "OE_TO_maths_en_COMP", "train"
        ),
        Benchmark("svamp", _svamp_problem, "ChilleD/SVAMP"),
        Benchmark("strategyqa", _strategyqa_problem, "ChilleD/StrategyQA", file_names=("task.json",)),
    )
}


def _read_records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(location, record) for each record of a .jsonl file (one object a line, blank lines
    skipped) or a .json file (a list of objects, or BIG-bench's {"examples": [...]})."""
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
        if isinstance(data, dict) and isinstance(data.get("examples"), list):
            data = data["examples"]
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a list of records or {{'examples': [...]}}")
        located = ((f"{path} record {i}", r) for i, r in enumerate(data))
    else:
        located = jsonl.records(path)
    for location, record in located:
        if not isinstance(record, dict):
            raise ValueError(f"{location}: expected a JSON object, got {type(record).__name__}")
        yield location, record


def _resolve_file(path: Path, split: str, file_names: tuple[str, ...]) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.is_file():
        return path
    candidates = [f"{split}.jsonl", f"{split}.json", *file_names]
    for name in candidates:
        if (path / name).is_file():
            return path / name
    raise FileNotFoundError(f"{path} holds none of {', '.join(candidates)}")


def _convert_all(
    located: Iterable[tuple[str, dict[str, Any]]],
    convert: Callable[[dict[str, Any], int], Problem],
    limit: int | None,
    source: str,
) -> list[Problem]:
    """Problems from (location, record) pairs. Records with an empty question or gold answer (a
    data quirk: two MATH train solutions end in an empty \\boxed{}) are skipped with a warning."""
    problems, skipped = [], []
    for index, (location, record) in enumerate(located):
        if limit is not None and len(problems) >= limit:
            break
        try:
            problem = convert(record, index)
        except _RecordError as e:
            raise ValueError(f"{location}: {e}") from None
        if problem.question.strip() and problem.answer.strip():
            problems.append(problem)
        else:
            skipped.append(location)
    if skipped:
        warnings.warn(
            f"{source}: skipped {len(skipped)} record(s) with an empty question or answer: "
            + ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else ""),
            stacklevel=3,
        )
    if not problems and limit != 0:
        raise ValueError(f"{source}: no records")
    return problems


def load_benchmark(
    name: str, path: str | Path | None = None, split: str | None = None, limit: int | None = None
) -> list[Problem]:
    """The first `limit` problems (all when None) of benchmark `name`, from `path` (a file, or a
    folder with `<split>.jsonl`) or, when `path` is None, from the Hugging Face Hub.
    `split` defaults to "test" locally and to the hub dataset's evaluation split otherwise."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(sorted(BENCHMARKS))}")
    bench = BENCHMARKS[name]
    if path is None:
        import datasets  # noqa: PLC0415 - heavy, and only this path needs it

        split = split or bench.hub_split
        rows = datasets.load_dataset(bench.hub_id, bench.hub_config, split=split)
        located = ((f"{bench.hub_id}[{split}] row {i}", dict(r)) for i, r in enumerate(rows))
        return _convert_all(located, bench.convert, limit, f"{bench.hub_id}[{split}]")
    file = _resolve_file(Path(path), split or "test", bench.file_names)
    return _convert_all(_read_records(file), bench.convert, limit, str(file))


def load_jsonl_problems(
    path: str | Path,
    question_field: str,
    answer_field: str,
    solution_field: str | None = None,
    limit: int | None = None,
) -> list[Problem]:
    """Problems from any .jsonl (or .json list) file, with the named fields; ids from an id-like
    field (`id`, `idx`, ...) or the record index. Answers go through `answer_text`."""

    def convert(record: dict[str, Any], index: int) -> Problem:
        solution = None if solution_field is None else str(_field(record, solution_field))
        answer = answer_text(_field(record, answer_field))
        return Problem(_record_id(record, index), str(_field(record, question_field)), answer, solution)

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{file} does not exist or is not a file")
    return _convert_all(_read_records(file), convert, limit, str(file))
