"""Step labelers: verifier, outcome, and the LLM judge with its verdict parser."""

import pytest

from caspo_jax.caspo import label
from caspo_jax.data import arith
from hf_models import save_hf_model, save_tokenizer

P = arith.ArithProblem(7, (("+", 5), ("*", 3)))


def item(steps, reference="36"):
    return label.LabelItem(P.question, reference, tuple(steps))


def test_verifier_labels_each_step():
    verifier = label.VerifierLabeler(lambda q, k, s: arith.verify_step(arith.parse_question(q), k, s))
    got = verifier.label([item(["7 + 5 = 12", "12 * 3 = 36", "answer: 36"]), item(["7 + 5 = 13", "12 * 3 = 36"])])
    assert got == [[True, True, True], [False, True]]


def test_outcome_labels_follow_the_final_answer():
    outcome = label.OutcomeLabeler()
    assert outcome.label([item(["a", "so \\boxed{36}"]), item(["a", "so \\boxed{35}"])]) == [[True, True], [False, False]]


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("First wrong step: 2", 1),
        ("Let me check... step 1 ok.\nFirst wrong step: none", 3),
        ("The first incorrect step is step 3.", 2),
        ("first wrong step:1\nWait, actually First wrong step: 2", 1),  # the last verdict wins
        ("All steps are correct.", 3),
        ("First wrong step: 7", None),  # out of range
        ("First wrong step: 0", None),
        ("I think it is fine", None),
        ("", None),
        ("step 2 is wrong", None),  # no verdict in the asked form: not guessed
    ],
)
def test_parse_verdict(reply, expected):
    assert label.parse_verdict(reply, 3) == expected


def test_labels_from_verdict():
    assert label.labels_from_verdict(1, 3) == [True, False, False]
    assert label.labels_from_verdict(3, 3) == [True, True, True]


def test_judge_survives_malformed_output(tmp_path):
    path = save_hf_model("qwen2", tmp_path / "judge")
    save_tokenizer(path, "char")
    judge = label.load_judge(str(path), max_new_tokens=8)
    items = [item(["7 + 5 = 12", "\\boxed{36}"]), item(["7 + 5 = 13", "\\boxed{35}"])]
    assert label.judge_prompt(items[0]).count("Step ") == 2
    got = judge.label(items)  # a random tiny model never writes a verdict
    assert judge.malformed == 2
    assert got == label.OutcomeLabeler().label(items)


def test_judge_that_cannot_be_loaded(tmp_path):
    with pytest.raises(ValueError, match="judge model .* could not be loaded"):
        label.load_judge(str(tmp_path / "missing"))
