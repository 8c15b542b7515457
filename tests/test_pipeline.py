"""Pair records -> token ids -> packed batches: layout, tokenisation, truncation, bad input, grain state."""

import json

import datasets
import numpy as np
import pytest

from caspo_jax.config import DataConfig
from caspo_jax.data import pairs_io, pipeline
from caspo_jax.model.tokenizer import load_tokenizer
from hf_models import save_tokenizer


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    return {kind: load_tokenizer(save_tokenizer(root / kind, kind)) for kind in ("char", "bpe")}


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_bucket_sizes():
    assert [pipeline.bucket(n) for n in (1, 16, 17, 33, 64, 65, 129, 192, 193, 320)] == [
        16, 16, 20, 40, 64, 80, 160, 192, 224, 320,
    ]  # fmt: skip
    assert all(pipeline.bucket(n) >= n and pipeline.bucket(n) <= 1.25 * n for n in range(17, 5000))


def test_pack_layout_by_hand():
    # prompt [5 6 7], chosen [8 9], rejected [10]; a second short row; batch filled to 3 rows.
    ex = [
        {"prompt": np.array([5, 6, 7]), "chosen": np.array([8, 9]), "rejected": np.array([10]), "weight": 2.0,
         "ref_chosen_logps": -1.0, "ref_rejected_logps": -2.0},
        {"prompt": np.array([11]), "chosen": np.array([12]), "rejected": np.array([13, 14]), "weight": 1.0,
         "ref_chosen_logps": -3.0, "ref_rejected_logps": -4.0},
    ]  # fmt: skip
    b = pipeline.pack(ex, batch_size=3)
    assert b["tokens"].shape == (3, 16) and b["gather"].shape == (3, 16)
    np.testing.assert_array_equal(b["tokens"][0, :7], [5, 6, 7, 8, 9, 10, 0])
    np.testing.assert_array_equal(b["positions"][0, :6], [0, 1, 2, 3, 4, 3])  # rejected restarts at 3
    np.testing.assert_array_equal(b["segments"][0, :7], [1, 1, 1, 2, 2, 3, 0])
    # chosen 8 <- row 2 (last prompt token), 9 <- row 3; rejected 10 <- row 2 as well.
    np.testing.assert_array_equal(b["gather"][0, :4], [2, 3, 2, 0])
    np.testing.assert_array_equal(b["targets"][0, :3], [8, 9, 10])
    np.testing.assert_array_equal(b["sides"][0, :4], [2, 2, 3, 0])
    # row 1: rejected [13, 14] at rows 2, 3: 13 <- row 0 (the prompt), 14 <- row 2.
    np.testing.assert_array_equal(b["gather"][1, :3], [0, 0, 2])
    np.testing.assert_array_equal(b["positions"][1, :4], [0, 1, 1, 2])
    np.testing.assert_array_equal(b["weights"], [2.0, 1.0, 0.0])  # the filler row weighs nothing
    np.testing.assert_array_equal(b["ref_rejected_logps"][:2], [-2.0, -4.0])
    half = pipeline.pack(ex, batch_size=3, rows=slice(1, 2))  # one process's rows, shapes from all
    assert half["tokens"].shape == (1, 16)
    np.testing.assert_array_equal(half["gather"][0], b["gather"][1])


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_tokenize_splits_like_trl(tokenizers, tmp_path, kind):
    tok = tokenizers[kind]
    rows = [{"prompt": "Step 1: 3 + 4 = 7\n\n", "chosen": "Step 2: 7 * 2 = 14\n\n", "rejected": "Step 2: 7 * 2 = 15"}]
    (ex,), stats = pipeline.tokenize(pairs_io.read_records(write_jsonl(tmp_path / "p.jsonl", rows)), tok, DataConfig())
    for side in ("chosen", "rejected"):  # prompt + completion tokens are the whole text's tokens
        whole = tok(rows[0]["prompt"] + rows[0][side], add_special_tokens=False)["input_ids"]
        assert list(ex["prompt"]) + list(ex[side]) == whole
    assert len(ex["prompt"]) > 0 and stats.truncated_prompts == 0
    (eos,), _ = pipeline.tokenize(pairs_io.read_records(tmp_path / "p.jsonl"), tok, DataConfig(add_eos=True))
    assert eos["chosen"][-1] == tok.eos_token_id and len(eos["chosen"]) == len(ex["chosen"]) + 1


def test_long_prompts_truncate_left_and_count_or_raise(tokenizers, tmp_path):
    rows = [
        {"prompt": "abcdefghij", "chosen": "xy", "rejected": "z"},
        {"prompt": "ab", "chosen": "c", "rejected": "d"},
        {"prompt": "ab", "chosen": "c", "rejected": "defghijk"},
    ]
    records = pairs_io.read_records(write_jsonl(tmp_path / "long.jsonl", rows))
    examples, stats = pipeline.tokenize(records, tokenizers["char"], DataConfig(max_length=6))
    assert stats.truncated_prompts == 2 and stats.truncated_completions == 1
    decode = tokenizers["char"].decode
    assert decode(examples[0]["prompt"]) == "ghij"  # the newest 4 tokens + 2 = 6
    cut = examples[2]  # the completion keeps max_length - 1 tokens, the prompt its last token
    assert [decode(cut[k]) for k in ("prompt", "chosen", "rejected")] == ["b", "c", "defgh"]
    with pytest.raises(ValueError, match=r"long\.jsonl:1: prompt \+ completion is 12 tokens, over data.max_length=6"):
        pipeline.tokenize(records, tokenizers["char"], DataConfig(max_length=6, truncation="error"))


@pytest.mark.parametrize(
    "line,message",
    [
        ('{"prompt": "p", "chosen": "c"}', r"bad\.jsonl:2: missing field 'rejected'"),
        ('{"prompt": "p", "chosen": "", "rejected": "r"}', r"bad\.jsonl:2: field 'chosen' is empty"),
        ('{"prompt": "p", "chosen": 3, "rejected": "r"}', r"bad\.jsonl:2: field 'chosen' must be a string, got int"),
        ('{"prompt": "p", "chosen": "c", "rejected": "r", "weight": -1}', r"bad\.jsonl:2: field 'weight' must be >= 0"),
        ('{"prompt": "p", "chosen": "c", "rejected": "r", "ref_chosen_logps": 1}', r"bad\.jsonl:2: give both"),
        ('{"prompt": "p", "chosen": "c"', r"bad\.jsonl:2: not valid JSON"),
        ('["p", "c", "r"]', r"bad\.jsonl:2: expected an object with prompt, chosen, rejected, got list"),
        (b'{"prompt": "caf\xe9", "chosen": "c", "rejected": "r"}', r"bad\.jsonl:2: not valid UTF-8 \(byte offset 15"),
    ],
)
def test_bad_records_name_file_and_line(tmp_path, line, message):
    good = b'{"prompt": "p", "chosen": "c", "rejected": "r"}\n'
    path = tmp_path / "bad.jsonl"
    path.write_bytes(good + (line if isinstance(line, bytes) else line.encode()) + b"\n")
    with pytest.raises(ValueError, match=message):
        pairs_io.read_records(path)


def test_other_sources_and_sft_records(tmp_path):
    rows = [
        {"prompt": "p1", "chosen": "c1", "rejected": "r1", "weight": 0.5},
        {"prompt": "p2", "chosen": "c2", "rejected": "r2"},
    ]
    datasets.Dataset.from_list(rows).to_parquet(tmp_path / "pairs.parquet")
    from_parquet = pairs_io.read_records(tmp_path / "pairs.parquet")
    from_dataset = pairs_io.read_records(datasets.Dataset.from_list(rows))
    assert [r.weight for r in from_parquet] == [0.5, 1.0] and from_parquet[1].where.endswith("pairs.parquet row 1")
    assert [(r.chosen, r.rejected) for r in from_dataset] == [(r.chosen, r.rejected) for r in from_parquet]
    sft = pairs_io.read_records(write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "p", "completion": "c"}]), pairs=False)
    assert sft[0].chosen == "c" and sft[0].rejected is None
    with pytest.raises(ValueError, match=r"sft\.jsonl:1: missing field 'chosen'"):
        pairs_io.read_records(write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "p"}]), pairs=False)
    with pytest.raises(ValueError, match="no records"):
        pairs_io.read_records(write_jsonl(tmp_path / "empty.jsonl", ["", "  "]))
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        pairs_io.read_records(tmp_path / "nope.jsonl")


def _examples(n):
    return [
        {"prompt": np.arange(1, 2 + i % 5), "chosen": np.array([i]), "rejected": np.array([i, i]), "weight": 1.0,
         "ref_chosen_logps": float(i), "ref_rejected_logps": 0.0}
        for i in range(n)
    ]  # fmt: skip


def test_shuffle_is_deterministic_resumable_and_split_by_process():
    examples = _examples(10)
    ds = pipeline.dataset(examples, 4, shuffle=True, seed=3, epochs=None)
    it = pipeline.iterator(ds)
    first = [next(it)["ref_chosen_logps"] for _ in range(5)]  # 20 examples: two epochs
    epoch1, epoch2 = np.concatenate(first)[:10], np.concatenate(first)[10:20]
    assert sorted(epoch1) == sorted(epoch2) == list(range(10)) and not np.array_equal(epoch1, epoch2)

    again = pipeline.iterator(pipeline.dataset(examples, 4, shuffle=True, seed=3, epochs=None))
    np.testing.assert_array_equal(next(again)["ref_chosen_logps"], first[0])
    state = again.get_state()
    resumed = pipeline.iterator(ds)
    resumed.set_state(state)
    for expected in first[1:]:
        np.testing.assert_array_equal(next(resumed)["ref_chosen_logps"], expected)

    halves = [pipeline.iterator(pipeline.dataset(examples, 4, shuffle=True, seed=3, process_index=p, process_count=2))
              for p in (0, 1)]  # fmt: skip
    b0, b1 = next(halves[0]), next(halves[1])
    np.testing.assert_array_equal(np.concatenate([b0["ref_chosen_logps"], b1["ref_chosen_logps"]]), first[0])
    assert b0["tokens"].shape[1] == b1["tokens"].shape[1]  # one bucket for the whole global batch
    last = list(pipeline.iterator(pipeline.dataset(examples, 4, shuffle=False, seed=0, epochs=1)))[-1]
    np.testing.assert_array_equal(last["weights"], [1, 1, 0, 0])  # 10 = 4 + 4 + 2, filled with weight 0
