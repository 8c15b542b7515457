"""The step-wise dataset: annotate() rows, parquet + card, loadable by `datasets.load_dataset`."""

import datasets
import numpy as np

from caspo_jax.caspo import annotate, dataset
from caspo_jax.caspo.label import VerifierLabeler
from caspo_jax.data import arith

P = arith.ArithProblem(7, (("+", 5), ("*", 3)))
PIECES = [chr(c) for c in range(128)]  # a character "vocabulary": token id = code point


def sample(text, index, conf_fn):
    ids = [ord(c) for c in text]
    return {
        "question_id": "q0", "question": P.question, "reference": str(P.answer), "prompt": "Q: " + P.question + "\n",
        "sample": index, "text": text, "token_ids": ids, "token_conf": [conf_fn(i) for i in range(len(ids))],
    }


def verifier():
    return VerifierLabeler(lambda q, k, s: arith.verify_step(arith.parse_question(q), k, s))


def annotated(round_index=1):
    texts = [P.solution(), "7 + 5 = 13\n\n13 * 3 = 39\n\nanswer: 39"]
    samples = [sample(t, i, lambda j, i=i: 0.5 + 0.01 * (j % 7) + 0.1 * i) for i, t in enumerate(texts)]
    return samples, annotate.annotate(samples, verifier(), PIECES, splitter="blank_line", aggregation="mean",
                                      round_index=round_index)


def test_annotate_rows_spans_confidence_and_labels():
    samples, (solutions, rows) = annotated()
    assert [len(s.steps) for s in solutions] == [3, 3]
    assert [r["label"] for r in rows] == [True, True, True, False, False, False]
    for row in rows:
        s = samples[row["sample"]]
        a, b = row["token_start"], row["token_end"]
        assert "".join(PIECES[t] for t in s["token_ids"][a:b]) == row["text"]
        assert np.allclose(row["token_confidences"], s["token_conf"][a:b])
        assert np.isclose(row["step_confidence"], np.mean(s["token_conf"][a:b]))
        assert row["labeler"] == "verifier" and row["round"] == 1
    # the solutions carry the same steps, with the delimiter after all but the last
    assert [st.ending for st in solutions[0].steps] == ["\n\n", "\n\n", ""]
    assert [st.label for st in solutions[1].steps] == [r["label"] for r in rows[3:]]


def test_stepless_samples_are_dropped():
    s = sample("   ", 0, lambda j: 0.5)
    solutions, rows = annotate.annotate([s], verifier(), PIECES, splitter="blank_line", aggregation="mean", round_index=1)
    assert solutions == [] and rows == []


def test_publish_is_loadable_with_a_card(tmp_path):
    _, (_, rows1) = annotated(1)
    _, (_, rows2) = annotated(2)
    t1 = dataset.write_parquet(rows1, tmp_path / "round_1" / "annotated.parquet")
    t2 = dataset.write_parquet(rows2, tmp_path / "round_2" / "annotated.parquet")
    folder = dataset.publish(tmp_path / "dataset", [t1, t2], signal="entropy_conf", aggregation="mean")
    card = (folder / "README.md").read_text()
    assert card.startswith("---") and "rounds 1, 2" in card and f"rows: {len(rows1) + len(rows2)} steps" in card
    ds = datasets.load_dataset("parquet", data_files=str(folder / "data" / "*.parquet"))["train"]
    assert len(ds) == len(rows1) + len(rows2)
    assert set(ds.column_names) == set(dataset.SCHEMA.names)
    assert sorted(set(ds["round"])) == [1, 2]
    by_folder = datasets.load_dataset(str(folder))["train"]  # through the card's configs entry
    assert len(by_folder) == len(ds)
    # republishing replaces the folder whole
    dataset.publish(folder, [t1], signal="entropy_conf", aggregation="mean")
    assert sorted(p.name for p in (folder / "data").iterdir()) == ["round_1.parquet"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_write_parquet_is_atomic_and_typed(tmp_path):
    _, (_, rows) = annotated()
    path = dataset.write_parquet(rows, tmp_path / "a.parquet")
    back = dataset.read_parquet(path)
    assert [r["text"] for r in back] == [r["text"] for r in rows]
    assert [p.name for p in tmp_path.iterdir()] == ["a.parquet"]


def test_annotate_command_writes_the_dataset(tmp_path):
    from caspo_jax.cli import main
    from hf_models import save_hf_model, save_tokenizer

    model = save_tokenizer(save_hf_model("qwen3", tmp_path / "model"), "char")
    solutions = tmp_path / "solutions.jsonl"
    solutions.write_text(
        '{"id": "a", "question": "7 + 5 * 3", "answer": "36", "solution": "7 + 5 = 12\\n\\n12 * 3 = 36\\n\\nanswer: 36"}\n'
        '{"id": "b", "question": "7 + 5 * 3", "answer": "36", "solution": "7 + 5 = 13\\n\\n13 * 3 = 39"}\n'
    )
    out = tmp_path / "ds"
    assert main(["annotate", "--model", str(model), "--solutions", str(solutions), "--out", str(out), "--labeler", "verifier"]) == 0
    ds = datasets.load_dataset(str(out))["train"]
    assert ds["label"] == [True, True, True, False, False]
    assert all(0.0 <= c <= 1.0 for row in ds["token_confidences"] for c in row)
    assert all(r["token_end"] - r["token_start"] == len(r["token_confidences"]) == len(r["text"]) for r in ds)


def test_annotate_command_rejects_a_solution_without_answer(tmp_path, capsys):
    from caspo_jax.cli import main

    solutions = tmp_path / "solutions.jsonl"
    solutions.write_text('{"question": "1 + 1", "solution": "1 + 1 = 2"}\n')
    assert main(["annotate", "--model", str(tmp_path), "--solutions", str(solutions), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"{solutions}:1" in err and "'answer'" in err
