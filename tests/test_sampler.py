"""The sampler against independent references: transformers' greedy `generate` and logits, numpy's
signals and top-k/top-p sets, Python's `str.find` for stop strings, and single-device runs for sharding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import jax
import jax.numpy as jnp

from caspo_jax.config import MeshConfig
from caspo_jax.infer import decoding, sampling
from caspo_jax.infer import stops as stops_lib
from caspo_jax.infer.sampler import Sampler, SamplingConfig
from caspo_jax.model import hf
from caspo_jax.model import tokenizer as tokenizer_lib
from caspo_jax.parallel import mesh as mesh_lib
from hf_models import VOCAB, lively_model, save_tokenizer, torch_logits

NEW = 32
GREEDY = SamplingConfig(max_new_tokens=NEW, step_delimiter=None)


def random_prompts(lengths, seed=0) -> list[list[int]]:
    rng = np.random.RandomState(seed)
    return [rng.randint(5, 100, n).tolist() for n in lengths]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    return {kind: tokenizer_lib.load_tokenizer(save_tokenizer(root / kind, kind)) for kind in ("char", "bpe")}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """variant -> (torch model, our config, our params); loaded lazily, once."""
    cache = {}

    def get(variant: str):
        if variant not in cache:
            model = lively_model(variant)
            path = tmp_path_factory.mktemp(variant) / "model"
            model.save_pretrained(path)
            cache[variant] = (model, *hf.load(path))
        return cache[variant]

    return get


# ---------------------------------------------------------------------------------------------------
# numpy references


def np_signals(logits: np.ndarray, tokens: np.ndarray, k: int = 20) -> dict[str, np.ndarray]:
    x = logits.astype(np.float64)
    logp = x - x.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    p = np.exp(logp)
    entropy = -(p * logp).sum(-1)
    return {
        "entropy": entropy,
        "entropy_conf": 1 - entropy / np.log(x.shape[-1]),
        "max_prob": p.max(-1),
        "topk_conf": -np.sort(logp, -1)[..., -k:].mean(-1),
        "logprob": np.take_along_axis(logp, tokens[..., None], -1)[..., 0],
    }


def np_sampling_distribution(logits: np.ndarray, temperature: float, top_k: int, top_p: float) -> np.ndarray:
    """transformers' warpers (temperature, top-k, top-p) on one row -> the distribution sampled from."""
    z = logits.astype(np.float64) / temperature
    if top_k:
        z = np.where(z >= np.sort(z)[-top_k], z, -np.inf)
    p = np.exp(z - z.max())
    p /= p.sum()
    if top_p < 1:
        order = np.argsort(-p, kind="stable")
        mass_before = np.cumsum(p[order]) - p[order]
        p[order[mass_before >= top_p]] = 0.0
        p /= p.sum()
    return p


def transformers_greedy(model, prompt: list[int], new_tokens: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    return out[0, len(prompt) :].tolist()


def logits_along(model, prompt: list[int], generated: np.ndarray) -> np.ndarray:
    """transformers' next-token logits at each generated position: [len(generated), V]."""
    full = np.asarray(prompt + generated.tolist())[None]
    return torch_logits(model, full)[0, len(prompt) - 1 : len(full[0]) - 1]


# ---------------------------------------------------------------------------------------------------
# greedy parity and signals


@pytest.fixture(scope="module")
def greedy_runs(models):
    runs = {}

    def get(variant: str):
        if variant not in runs:
            model, config, params = models(variant)
            sampler = Sampler(config, params)
            prompts = random_prompts([7, 19, 3], seed=1)
            runs[variant] = (model, prompts, sampler.generate(prompts, GREEDY), sampler.generate(prompts[1:2], GREEDY))
        return runs[variant]

    return get


@pytest.mark.parametrize("variant", ["qwen2", "qwen3", "llama"])
def test_greedy_matches_transformers_for_single_prompts_and_ragged_batches(greedy_runs, variant):
    model, prompts, batch, single = greedy_runs(variant)
    seen = set()
    for row, prompt in enumerate(prompts):
        expected = transformers_greedy(model, prompt, NEW)
        assert batch.lengths[row] == len(expected)  # shorter when the row reached EOS
        assert batch.tokens[row, : len(expected)].tolist() == expected, f"row {row}"
        seen.update(expected)
    assert len(seen) >= 10  # a real test: the text does not just repeat one token
    assert single.tokens[0, : single.lengths[0]].tolist() == transformers_greedy(model, prompts[1], NEW)


@pytest.mark.parametrize("variant", ["qwen2", "llama"])
def test_signals_and_logprobs_match_numpy_on_transformers_logits(greedy_runs, variant):
    model, prompts, out, _ = greedy_runs(variant)
    for row, prompt in enumerate(prompts):
        n = out.lengths[row]
        tokens = out.tokens[row, :n]
        expected = np_signals(logits_along(model, prompt, tokens), tokens)
        np.testing.assert_allclose(out.logprobs[row, :n], expected["logprob"], atol=2e-4)
        for name in ("entropy", "entropy_conf", "max_prob", "topk_conf"):
            np.testing.assert_allclose(getattr(out.signals, name)[row, :n], expected[name], atol=2e-4, err_msg=name)
        assert not out.logprobs[row, n:].any() and not out.signals.entropy[row, n:].any()


# ---------------------------------------------------------------------------------------------------
# sampling


@pytest.mark.parametrize("temperature, top_k, top_p", [(0.8, 0, 0.6), (1.3, 10, 1.0), (0.9, 12, 0.7)])
def test_first_token_frequencies_follow_the_filtered_distribution(models, temperature, top_k, top_p):
    model, config, params = models("qwen3")
    prompt = random_prompts([9], seed=2)[0]
    draws = 3000
    sampling = SamplingConfig(max_new_tokens=1, temperature=temperature, top_k=top_k, top_p=top_p, step_delimiter=None)
    out = Sampler(config, params).generate([prompt], sampling, num_samples=draws, seed=3)
    expected = np_sampling_distribution(torch_logits(model, np.asarray([prompt]))[0, -1], temperature, top_k, top_p)
    drawn = out.tokens[:, 0]
    assert expected[drawn].min() > 0, "a token outside the allowed set was drawn"
    frequencies = np.bincount(drawn, minlength=VOCAB) / draws
    assert 0.5 * np.abs(frequencies - expected).sum() < 0.05  # total variation; ~0.02 expected by chance
    assert (expected > 0).sum() > 3  # the filter left a real choice


def test_sampled_tokens_stay_in_the_allowed_set_at_every_step(models):
    model, config, params = models("qwen3")
    prompts = random_prompts([6, 15], seed=4)
    temperature, top_k, top_p = 0.9, 8, 0.8
    sampling = SamplingConfig(max_new_tokens=24, temperature=temperature, top_k=top_k, top_p=top_p, step_delimiter=None)
    out = Sampler(config, params).generate(prompts, sampling, num_samples=8, seed=5)
    for row in range(out.tokens.shape[0]):
        n = out.lengths[row]
        tokens = out.tokens[row, :n]
        for logits, token in zip(logits_along(model, prompts[row // 8], tokens), tokens):
            assert np_sampling_distribution(logits, temperature, top_k, top_p)[token] > 0
    assert len({tuple(r) for r in out.tokens.tolist()}) > 8  # rows sampled independently


def test_block_searches_and_draws_match_numpy_over_several_blocks():
    """Vocabularies of many blocks, and padding: 1000 tokens are 32 blocks (of MAX_BLOCK) for argmax and
    top_k, enough for its two-stage search at k=20, and 300 are 3 blocks (of SUM_BLOCK) for draws."""
    rng = np.random.RandomState(0)
    x = rng.randn(4, 1000).astype(np.float32)
    x[1] = 0.0  # all tied: the first index wins
    x[2, [3, 700]] = 9.0  # tied maxima in different blocks
    np.testing.assert_array_equal(np.asarray(sampling.argmax(jnp.asarray(x))), x.argmax(-1))
    values, ids = sampling.top_k(jnp.asarray(x), 20)
    np.testing.assert_array_equal(np.asarray(values), -np.sort(-x, axis=-1)[:, :20])
    np.testing.assert_array_equal(np.take_along_axis(x, np.asarray(ids), -1), np.asarray(values))
    chosen = rng.randint(0, 1000, (4, 3))
    np.testing.assert_array_equal(  # one id per row, or several: [B, V] or [B, 1, V] logits
        np.asarray(sampling.pick(jnp.asarray(x)[:, None], jnp.asarray(chosen[:, :1]))), x[np.arange(4), chosen[:, 0]][:, None]
    )
    np.testing.assert_array_equal(
        np.asarray(sampling.pick(jnp.asarray(np.repeat(x[:, None], 3, 1)), jnp.asarray(chosen))),
        np.take_along_axis(x, chosen, -1),
    )

    logits = 2.0 * rng.randn(300)
    draws = 4000
    weights = np.exp(logits - logits.max()).astype(np.float32)
    weights[::7] = 0.0
    tiled = jnp.asarray(np.tile(weights, (draws, 1)))
    uniform = np.linspace(0, 1, draws, endpoint=False, dtype=np.float32)
    drawn = np.asarray(sampling.draw(tiled, jnp.asarray(uniform)))
    cdf = np.cumsum(weights, dtype=np.float64)
    targets = uniform * cdf[-1]
    expected = np.searchsorted(cdf, targets, side="right")  # numpy's inverse CDF
    clear = np.abs(targets[:, None] - cdf[None, :]).min(-1) > 1e-5 * cdf[-1]  # not on a boundary
    np.testing.assert_array_equal(drawn[clear], expected[clear])
    assert weights[drawn].min() > 0 and clear.mean() > 0.95

    nucleus = np.asarray(sampling.nucleus_draw(tiled, jax.random.split(jax.random.key(1), draws), jnp.float32(0.7)))
    expected = np_sampling_distribution(np.log(np.maximum(weights, 1e-30)), 1.0, 0, 0.7)
    assert expected[nucleus].min() > 0
    assert 0.5 * np.abs(np.bincount(nucleus, minlength=300) / draws - expected).sum() < 0.05  # chance: ~0.03


def test_seeds_reproduce_and_samples_share_one_prefill(models):
    _, config, params = models("qwen3")
    sampler = Sampler(config, params)
    prompt = random_prompts([11], seed=6)[0]
    sampling = SamplingConfig(max_new_tokens=16, temperature=1.0, top_p=0.9, step_delimiter=None)
    first = sampler.generate([prompt], sampling, num_samples=4, seed=7)
    again = sampler.generate([prompt], sampling, num_samples=4, seed=7)
    other = sampler.generate([prompt], sampling, num_samples=4, seed=8)
    copies = sampler.generate([prompt] * 4, sampling, seed=7)  # 4 prefills, the same row ids
    np.testing.assert_array_equal(first.tokens, again.tokens)
    np.testing.assert_array_equal(first.tokens, copies.tokens)
    np.testing.assert_allclose(first.signals.entropy, copies.signals.entropy, atol=1e-5)
    assert not np.array_equal(first.tokens, other.tokens)


# ---------------------------------------------------------------------------------------------------
# stop strings and steps


def python_ends(pieces: list[str], tokens: list[int], string: str) -> list[int]:
    """For each token: where (offset in its piece) the first occurrence of string ending inside the
    characters it added ends, or NOT_FOUND."""
    text, ends = "", []
    for t in tokens:
        start, text = len(text), text + pieces[t]
        hits = [i + len(string) - 1 for i in range(len(text)) if text.startswith(string, i)]
        hits = [h - start for h in hits if start <= h < len(text)]
        ends.append(min(hits) if hits else stops_lib.NOT_FOUND)
    return ends


def test_stop_table_agrees_with_python_string_search(tokenizers):
    tok = tokenizers["bpe"]
    pieces = stops_lib.token_pieces(tok, VOCAB)
    strings = ["\n\n", "= 7", "4 =", "Step", "\n", "14\n\nThe", "2"]
    table = stops_lib.build_table(pieces, strings)
    rng = np.random.RandomState(0)
    rows = [tok("Step 1: 3 + 4 = 7\n\nStep 2: 7 * 2 = 14\n\nThe answer is 14")["input_ids"]]
    rows += [rng.randint(0, len(tok), 40).tolist() for _ in range(5)]
    width = max(map(len, rows))
    tokens = np.asarray([r + [0] * (width - len(r)) for r in rows])  # id 0 is <pad>: an empty piece
    advance = jax.jit(stops_lib.advance)
    recent, found = stops_lib.start(table, len(rows)), []
    for i in range(width):
        recent, end = advance(table, recent, tokens[:, i])
        found.append(np.asarray(end))
    found = np.stack(found, axis=1)  # [B, T, S]
    for s, string in enumerate(strings):
        for r, row in enumerate(tokens.tolist()):
            assert found[r, :, s].tolist() == python_ends(pieces, row, string), (string, r)
    step = tokens[0].tolist().index(tok.convert_tokens_to_ids("\n\nStep"))
    assert found[0, step, 0] == 1  # "\n\n" ends at offset 1 of the "\n\nStep" token


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_stop_strings_end_rows_where_the_text_first_contains_them(models, tokenizers, kind):
    _, config, params = models("llama")
    sampler = Sampler(config, params, tokenizers[kind], eos_token_ids=())
    pieces = stops_lib.token_pieces(tokenizers[kind], VOCAB)
    prompts = random_prompts([5, 12, 8], seed=9)
    free = sampler.generate(prompts, GREEDY)
    row_pieces = [pieces[t] for t in free.tokens[0]]
    # A string spanning a token boundary, ending inside a multi-character piece when there is one.
    cut = next((i for i in range(2, NEW) if len(row_pieces[i]) > 1), 6)
    before = "".join(row_pieces[:cut])
    stop = before[-2:] + row_pieces[cut][:1]
    out = sampler.generate(prompts, SamplingConfig(max_new_tokens=NEW, stop_strings=(stop,), step_delimiter=None))
    for row, text in enumerate(sampler.texts(free)):
        found = text.find(stop)
        if found < 0:
            assert out.finish[row] == decoding.FINISH_LENGTH and out.lengths[row] == NEW
            continue
        n = out.lengths[row]
        assert out.finish[row] == decoding.FINISH_STOP and out.stop_index[row] == 0
        np.testing.assert_array_equal(out.tokens[row, :n], free.tokens[row, :n])
        generated = "".join(pieces[t] for t in out.tokens[row, :n])
        assert generated[: len(generated) - out.overhang[row]] == text[: found + len(stop)]
        assert (out.tokens[row, n:] == sampler.pad_token_id).all()
    assert out.finish[0] == decoding.FINISH_STOP


def test_step_ends_and_stopping_at_the_end_of_the_current_step(models, tokenizers):
    _, config, params = models("qwen2")
    tok = tokenizers["char"]
    sampler = Sampler(config, params, tok, eos_token_ids=())
    prompts = random_prompts([4, 10], seed=10)
    free = sampler.generate(prompts, GREEDY)
    text = sampler.texts(free)[0]
    delimiter = max((text[i : i + 2] for i in range(len(text) - 1)), key=text.count)  # a repeated bigram
    marked = sampler.generate(prompts, SamplingConfig(max_new_tokens=NEW, step_delimiter=delimiter))
    pieces = stops_lib.token_pieces(tok, VOCAB)
    for row in range(2):
        expected = np.asarray(python_ends(pieces, free.tokens[row].tolist(), delimiter)) != stops_lib.NOT_FOUND
        np.testing.assert_array_equal(marked.step_ends[row], expected)
    assert marked.step_ends[0].sum() >= 2
    stepped = sampler.generate(prompts, SamplingConfig(max_new_tokens=NEW, step_delimiter=delimiter, until_step_end=True))
    first_end = int(np.argmax(marked.step_ends[0]))
    assert stepped.finish[0] == decoding.FINISH_STEP and stepped.stop_index[0] == 0
    assert stepped.lengths[0] == first_end + 1
    np.testing.assert_array_equal(stepped.tokens[0, : first_end + 1], free.tokens[0, : first_end + 1])


def test_decode_goes_on_from_where_a_step_ended(models, tokenizers):
    """prefill -> decode one step -> decode again from the returned cache equals one long decode."""
    _, config, params = models("qwen2")
    tok = tokenizers["char"]
    sampler = Sampler(config, params, tok, eos_token_ids=())
    prompt = random_prompts([6], seed=11)[0]
    text = sampler.texts(sampler.generate([prompt], GREEDY))[0]
    delimiter = text[5:7]
    tokens = np.asarray([prompt], np.int32)
    first_plan = SamplingConfig(max_new_tokens=12, step_delimiter=delimiter, until_step_end=True)
    rest_plan = SamplingConfig(max_new_tokens=NEW - 12, step_delimiter=delimiter)
    knobs = decoding.Knobs(
        temperature=np.float32(1), top_p=np.float32(1), eos=np.asarray([-1], np.int32), pad=np.int32(0),
        seed=np.int32(0), rows=np.zeros(1, np.int32),
    )
    cache, logits = decoding.prefill(params, tokens, np.ones_like(tokens), model=config, num_samples=1, cache_length=len(prompt) + NEW)
    first, cache, logits = decoding.decode(params, cache, logits, knobs, sampler.table((delimiter,)), model=config, plan=first_plan.plan())
    rest, _, _ = decoding.decode(params, cache, logits, knobs, sampler.table((delimiter,)), model=config, plan=rest_plan.plan())
    n = int(first.lengths[0])
    assert int(first.finish[0]) == decoding.FINISH_STEP and n < 12
    joined = np.concatenate([np.asarray(first.tokens[0, :n]), np.asarray(rest.tokens[0])])[:NEW]
    straight = sampler.generate([prompt], SamplingConfig(max_new_tokens=NEW, step_delimiter=None))
    np.testing.assert_array_equal(joined[: NEW - 12], straight.tokens[0, : NEW - 12])


# ---------------------------------------------------------------------------------------------------
# sharding and bad input


@pytest.mark.timeout(300)
def test_sharded_generation_equals_single_device(models, tokenizers, tmp_path):
    model, config, params = models("qwen3")
    path = tmp_path / "m"
    model.save_pretrained(path)
    mesh = mesh_lib.make_mesh(MeshConfig(2, 2, 2))
    _, sharded_params = hf.load(path, mesh=mesh)
    prompts = random_prompts([3, 9, 14, 5, 7, 21, 2, 11], seed=12)
    single = Sampler(config, params, tokenizers["char"])
    sharded = Sampler(config, sharded_params, tokenizers["char"], mesh=mesh)
    for config_ in (GREEDY, SamplingConfig(max_new_tokens=NEW, temperature=0.8, top_p=0.9, stop_strings=("e",))):
        expected = single.generate(prompts, config_, seed=13)
        got = sharded.generate(prompts, config_, seed=13)
        np.testing.assert_array_equal(got.tokens, expected.tokens)
        np.testing.assert_array_equal(got.lengths, expected.lengths)
        np.testing.assert_allclose(got.signals.entropy_conf, expected.signals.entropy_conf, atol=1e-5)
        np.testing.assert_allclose(got.logprobs, expected.logprobs, atol=1e-4)


def test_bad_input_raises_clear_errors(models, tokenizers):
    _, config, params = models("qwen3")
    sampler = Sampler(config, params, tokenizers["char"], max_length=40)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        sampler.generate([[5, 6], []], GREEDY)
    with pytest.raises(ValueError, match="prompt 0 has 30 tokens.*needs 62 cache slots, more than max_length=40"):
        sampler.generate([list(range(5, 35))], GREEDY)
    with pytest.raises(ValueError, match="stop string '→' can never be generated"):
        sampler.generate([[5, 6]], SamplingConfig(stop_strings=("→",)))
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        sampler.generate([[5, 6]], GREEDY, num_samples=0)
    with pytest.raises(ValueError, match="no prompts"):
        sampler.generate([], GREEDY)
    with pytest.raises(ValueError, match="token ids outside"):
        sampler.generate([[5, VOCAB]], GREEDY)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        Sampler(config, params).generate([[5, 6]], SamplingConfig(max_new_tokens=4))
    for bad, message in [
        (dict(temperature=-1.0), "temperature"), (dict(top_p=0.0), "top_p"), (dict(top_k=-1), "top_k"),
        (dict(max_new_tokens=0), "max_new_tokens"), (dict(stop_strings="\n\n"), "stop_strings"),
        (dict(stop_strings=("",)), None), (dict(until_step_end=True, step_delimiter=None), "until_step_end"),
    ]:
        with pytest.raises(ValueError, match=message):
            sampler.generate([[5, 6]], SamplingConfig(**bad))
