"""CaT and DeepConf against independent references: the greedy sampler's tokens, a model whose
logits are arranged by hand (torch computes the confidences it implies), counts taken from the
returned tree, and a single-device run for sharding."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import jax

from caspo_jax.config import CaTConfig, EvalConfig, MeshConfig
from caspo_jax.eval import decoders
from caspo_jax.infer import cat, cat_tree, decoding, deepconf, stops
from caspo_jax.infer.sampler import Sampler, SamplingConfig
from caspo_jax.model import hf
from caspo_jax.model import tokenizer as tokenizer_lib
from caspo_jax.parallel import mesh as mesh_lib
from hf_models import VOCAB, lively_model, save_tokenizer, torch_logits

SMALL = CaTConfig(width=2, branch=3, budget=7, tau=0.0, max_steps=4, step_tokens=8)
X, Y, Z = 40, 41, 42  # Z: next token is X or Y, 50/50; X: next distribution ~uniform


def forked(model):
    """Hidden dims 0 and 1 are reserved: no token but Z and X writes them, no layer writes them. Z
    points along dim 1, where only X's and Y's head rows look (a 50/50 fork); X points along dim 0,
    where no head row looks (after X the logits are ~flat)."""
    with torch.no_grad():
        emb, head = model.model.embed_tokens.weight, model.lm_head.weight
        emb[:, :2] = 0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[:2] = 0
            layer.mlp.down_proj.weight[:2] = 0
        emb[Z] = 0
        emb[Z, 1] = 1e4
        emb[X] = 0
        emb[X, 0] = 1e4
        head[:, :2] = 0
        head[X, 1] = head[Y, 1] = 5.0
    return model


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return tokenizer_lib.load_tokenizer(save_tokenizer(tmp_path_factory.mktemp("tok") / "char", "char"))


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen3") / "m"
    lively_model("qwen3").save_pretrained(path)
    return path


def sampler_for(path, tokenizer, mesh=None) -> Sampler:
    config, params = hf.load(path, mesh=mesh)
    return Sampler(config, params, tokenizer, mesh=mesh)


def prompts(tokenizer) -> list[list[int]]:
    return tokenizer_lib.encode(tokenizer, ["What is 3 + 4?", "Add 12 and 30, then halve it."])


def tree(result: cat_tree.CaTResult) -> list[tuple]:
    return [(p.id, p.parent, p.started, p.tokens, p.status, round(p.confidence, 5)) for p in result.paths]


def test_one_path_greedy_is_the_greedy_sampler(qwen3, tokenizer):
    sampler = sampler_for(qwen3, tokenizer)
    cfg = CaTConfig(width=1, branch=1, budget=1, tau=0.0, max_steps=6, step_tokens=8)
    results = cat.search(sampler, prompts(tokenizer), cfg, temperature=0.0)
    greedy = sampler.generate(prompts(tokenizer), SamplingConfig(max_new_tokens=48, temperature=0.0, step_delimiter=None))
    for q, result in enumerate(results):
        (path,) = result.paths
        expected = greedy.tokens[q, : greedy.lengths[q]].tolist()
        assert len(path.tokens) >= 8 and path.tokens == expected[: len(path.tokens)]
        if path.status == "finished":
            assert path.tokens == expected
        assert result.tokens == len(path.tokens)
        assert len(path.step_confidence) == result.rounds


def test_a_path_below_tau_is_never_extended(tmp_path, tokenizer):
    model = forked(lively_model("qwen2"))
    model.save_pretrained(tmp_path / "m")
    prompt = [10, 11, Z]
    conf = lambda logits: 1 - (-(torch.softmax(torch.tensor(logits), -1) * torch.log_softmax(torch.tensor(logits), -1)).sum()) / np.log(VOCAB)
    after = {t: float(conf(torch_logits(model, [prompt + [t]])[0, -1])) for t in (X, Y)}
    fork = torch.softmax(torch.tensor(torch_logits(model, [prompt])[0, -1]), -1)
    assert fork[X] > 0.45 and fork[Y] > 0.45 and after[X] < 0.01 and after[Y] > 0.1  # the arranged model
    sampler = sampler_for(tmp_path / "m", tokenizer)
    cfg = CaTConfig(width=4, branch=4, budget=10, tau=0.05, path_aggregation="min", max_steps=4, step_tokens=1)
    for seed in range(5):
        (result,) = cat.search(sampler, [prompt], cfg, temperature=1.0, seed=seed)
        first = {p.tokens[0] for p in result.paths}
        if first == {X, Y}:
            break
    assert first == {X, Y}
    for p in result.paths:
        if p.tokens[0] == X:  # its second step is the flat one: pruned there, never extended after
            assert p.status == "pruned" and p.ended == 1 and len(p.tokens) == 2
            assert p.step_confidence[1] < 0.01
        elif p.started == 0:
            assert p.status != "pruned" or p.ended > 1


def test_budgets_are_never_exceeded(qwen3, tokenizer):
    sampler = sampler_for(qwen3, tokenizer)
    for budget in (1, 4, 7):
        results = cat.search(sampler, prompts(tokenizer), dataclasses.replace(SMALL, budget=budget), temperature=1.0)
        for result in results:
            assert len(result.paths) <= budget
            assert sorted(p.id for p in result.paths) == list(range(len(result.paths)))
    capped = dataclasses.replace(SMALL, max_tokens=40)
    for result in cat.search(sampler, prompts(tokenizer), capped, temperature=1.0):
        assert result.tokens <= 40 and result.tokens == sum(p.own_tokens for p in result.paths)


def test_same_seed_same_tree_and_transfer_free_rounds(qwen3, tokenizer):
    sampler = sampler_for(qwen3, tokenizer)
    first = cat.search(sampler, prompts(tokenizer), SMALL, temperature=1.0, seed=3)
    with jax.transfer_guard("disallow"):  # implicit host<->device transfers raise
        again = cat.search(sampler, prompts(tokenizer), SMALL, temperature=1.0, seed=3)
    other = cat.search(sampler, prompts(tokenizer), SMALL, temperature=1.0, seed=4)
    assert [tree(r) for r in first] == [tree(r) for r in again]
    assert [tree(r) for r in first] != [tree(r) for r in other]
    assert len(first[0].paths) > 1 and any(p.parent is not None for p in first[0].paths)
    for p in first[0].paths:  # a branch shares its parent's steps before it started
        if p.parent is not None:
            parent = first[0].paths[p.parent]
            assert p.step_confidence[: p.started] == parent.step_confidence[: p.started]


@pytest.mark.timeout(300)
def test_sharded_search_equals_single_device(qwen3, tokenizer):
    single = cat.search(sampler_for(qwen3, tokenizer), prompts(tokenizer), SMALL, temperature=1.0, seed=5)
    mesh = mesh_lib.make_mesh(MeshConfig(2, 4, 1))
    sharded = cat.search(sampler_for(qwen3, tokenizer, mesh), prompts(tokenizer), SMALL, temperature=1.0, seed=5)
    for a, b in zip(single, sharded):
        assert [(p.id, p.parent, p.tokens, p.status) for p in a.paths] == [(p.id, p.parent, p.tokens, p.status) for p in b.paths]
        np.testing.assert_allclose([p.confidence for p in a.paths], [p.confidence for p in b.paths], atol=1e-5)


def test_vote_weights_by_confidence_and_best_path():
    def path(i, answer, confidence, status="finished"):
        return cat_tree.Path(i, None, 0, [], [], [], confidence, status, 0, answer=answer)

    paths = [path(0, "3", 0.9), path(1, "5", 0.4), path(2, "5", 0.4), path(3, "7", 0.99, "pruned")]
    assert cat_tree.choose(paths, "vote") == 0  # 0.9 for "3" beats 0.8 for "5"; the pruned path has no say
    paths[2].confidence = 0.6
    assert cat_tree.choose(paths, "vote") == 1 and cat_tree.choose(paths, "best") == 0


def test_windowed_confidence_stop_and_deepconf(qwen3, tokenizer):
    sampler = sampler_for(qwen3, tokenizer)
    conf = np.array([3.0, 1.0, 2.0, 5.0, 0.5])
    assert deepconf.lowest_group_confidence(conf, 5, 2) == pytest.approx(min((conf[i] + conf[i + 1]) / 2 for i in range(4)))
    sampling = SamplingConfig(max_new_tokens=24, temperature=1.0, step_delimiter=None)
    for floor, stopped in ((np.inf, True), (-np.inf, False)):
        out = deepconf._stopping_decode(sampler, prompts(tokenizer), sampling, 2, np.full(2, floor, np.float32), 5, 0, 0)
        assert (out.finish == decoding.FINISH_LOW_CONFIDENCE).all() == stopped
        if stopped:
            assert (out.lengths == 5).all()
    result = deepconf.generate(sampler, prompts(tokenizer), CaTConfig(warmup=3, window=4, percentile=90), 6, sampling)
    voting = result.voting.reshape(2, 6)
    assert voting[:, :3].all() and (~voting[:, 3:]).any()  # warm-up traces always vote; some later ones stop
    stopped_rows = np.flatnonzero(~result.voting)
    for row in stopped_rows:  # each stopped exactly when its window fell below its question's threshold
        n = result.output.lengths[row]
        window = result.output.signals.topk_conf[row, n - 4 : n].mean()
        assert window < result.threshold[row // 6]


def test_eval_methods_cat_and_deepconf(qwen3, tokenizer):
    sampler = sampler_for(qwen3, tokenizer)
    pieces = stops.token_pieces(tokenizer, sampler.model.vocab_size)
    base = dict(k=5, max_new_tokens=16, cat=CaTConfig(width=2, branch=2, tau=0.0, max_steps=3, step_tokens=6, warmup=2, window=4))
    for method in ("cat", "deepconf"):
        decisions = decoders.METHODS[method](sampler, prompts(tokenizer), EvalConfig(method=method, **base), pieces)
        assert len(decisions) == 2
        for d in decisions:
            assert 1 <= len(d.traces) <= 5 and d.tokens > 0
            assert d.chosen is None or d.traces[d.chosen].answer is not None


def live_per_round(result: cat_tree.CaTResult) -> list[int]:
    """Slots live in each round, counted from the tree (a path is live from its start to its end)."""
    return [sum(p.started <= n <= p.ended for p in result.paths) for n in range(result.rounds)]


def test_compaction_gives_the_same_trees_on_fewer_rows(qwen3, tokenizer):
    sampler = sampler_for(qwen3, tokenizer)
    pruning = dataclasses.replace(SMALL, tau=0.3, max_steps=5)
    for cfg in (SMALL, pruning):
        packed = cat.search(sampler, prompts(tokenizer), cfg, temperature=1.0, seed=2)
        full = cat.search(sampler, prompts(tokenizer), cfg, temperature=1.0, seed=2, compact=False)
        for a, b in zip(packed, full):
            assert [(p.id, p.parent, p.started, p.tokens, p.status) for p in a.paths] == \
                [(p.id, p.parent, p.started, p.tokens, p.status) for p in b.paths]
            np.testing.assert_allclose([p.confidence for p in a.paths], [p.confidence for p in b.paths], atol=1e-5)
            assert a.answer == b.answer
        total = 2 * SMALL.width * SMALL.branch
        assert full[0].batch_rows == [total] * full[0].rounds
        live = np.sum([live_per_round(r) for r in packed], axis=0)
        assert (np.array(packed[0].batch_rows) >= live).all()  # every live slot had a row
        assert packed[0].batch_rows[0] == 6 < total  # round 0: min(B, K) = 3 live slots per question
        assert packed[0].row_steps < full[0].row_steps
    assert any(p.status == "pruned" for r in packed for p in r.paths)


def test_bucket_sizes():
    # 24, 18, 14, 11, 8, 6, 5, 4, 3, 2, 2, 2, 1
    assert [cat.bucket(n, 24) for n in (1, 3, 4, 6, 7, 12, 15, 19, 24)] == [1, 3, 4, 6, 8, 14, 18, 24, 24]
    assert [cat.bucket(n, 24, 8) for n in (1, 8, 9, 17)] == [8, 8, 16, 24]
    assert cat.bucket(4, 24, shrink=0.5) == 6


def test_adaptive_branching_spends_new_paths_on_unsure_steps(qwen3, tokenizer):
    sampler = sampler_for(qwen3, tokenizer)
    cfg = dataclasses.replace(SMALL, budget=10, max_steps=5)
    run = lambda below: cat.search(
        sampler, prompts(tokenizer), dataclasses.replace(cfg, branch_below=below), temperature=1.0, seed=1
    )
    fixed, never, always = run(None), run(0.0), run(2.0)
    assert [tree(r) for r in always] == [tree(r) for r in fixed]
    for r in never:  # nothing below 0: only the root's min(B, K) paths
        assert len(r.paths) == SMALL.branch and all(p.parent is None for p in r.paths)
    steps = [c for r in fixed for p in r.paths for c in p.step_confidence]
    below = float(np.median(steps))
    adaptive = run(below)
    branched = [(r, p) for r in adaptive for p in r.paths if p.parent is not None]
    assert branched
    for r, p in branched:  # a new path starts only under a parent whose last step was unsure
        assert r.paths[p.parent].step_confidence[p.started - 1] < below


def test_pruning_never_abandons_a_question(qwen3, tokenizer):
    sampler = sampler_for(qwen3, tokenizer)
    everything_below = dataclasses.replace(SMALL, tau=2.0, max_steps=5)  # confidences are <= 1
    for result in cat.search(sampler, prompts(tokenizer), everything_below, temperature=1.0, seed=1):
        kept = [p for p in result.paths if p.status != "pruned"]
        assert len(kept) == 1 and kept[0].status in ("finished", "unfinished")  # one path carried to the end
        assert kept[0].ended == result.rounds - 1 or kept[0].status == "finished"
        assert all(p.ended <= kept[0].ended for p in result.paths)
