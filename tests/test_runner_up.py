"""The runner-up branch: second most likely first token, then greedy to the step's end, against
transformers' own logits and greedy generation."""

import torch
import transformers

from caspo_jax.caspo import annotate, pairs
from caspo_jax.caspo.label import VerifierLabeler
from caspo_jax.data.sources import Problem
from caspo_jax.infer.sampler import Sampler
from caspo_jax.model import hf
from caspo_jax.model import tokenizer as tokenizer_lib
from hf_models import save_hf_model, save_tokenizer


def test_runner_up_step_matches_transformers(tmp_path):
    path = save_hf_model("qwen3", tmp_path / "m")
    save_tokenizer(path, "bpe")  # covers the whole vocabulary: every token has text
    tok = tokenizer_lib.load_tokenizer(path)
    config, params = hf.load(path)
    sampler = Sampler(config, params, tok)
    solution = pairs.Solution("q", "Q: 1 + 2\n", (pairs.ScoredStep("1 + 2 = 3", 0.1, True),))
    candidate = pairs.Candidate(solution, 0, pairs.CORRECT_UNSURE)
    seen = []
    labeler = VerifierLabeler(lambda q, k, s: seen.append((q, k, s)) or False)
    got = annotate.runner_up_steps(
        sampler, [candidate], labeler, {"q": Problem("q", "1 + 2", "3", None)},
        max_new_tokens=12, signal="entropy_conf", splitter="blank_line", aggregation="mean",
    )

    model = transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    ids = tok("Q: 1 + 2\n", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        second = int(torch.topk(model(torch.tensor([ids])).logits[0, -1], 2).indices[1])
        generated = model.generate(torch.tensor([ids + [second]]), max_new_tokens=12, do_sample=False)[0, len(ids):]
    text = tok.decode(generated.tolist())
    expected = text.split("\n\n")[0].strip()

    assert expected, "the reference branch must have visible text for this test to mean anything"
    step = got[candidate.prefix_key]
    assert step.text == expected and step.label is False
    assert seen == [("1 + 2", 0, expected)]  # labelled with the prefix's steps before it
    assert 0.0 <= step.confidence <= 1.0
