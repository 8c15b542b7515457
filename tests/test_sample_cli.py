"""`caspo-jax sample` end to end on a tiny model with the offline character tokenizer."""

import json

import pytest
import transformers

from caspo_jax.cli import main
from hf_models import save_hf_model, save_tokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = save_hf_model("qwen3", tmp_path_factory.mktemp("cli") / "model")
    save_tokenizer(path, "char")
    return path


def test_sample_writes_n_samples_per_prompt_with_step_confidence(model_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "3 + 4 ="}) + "\n\n" + json.dumps({"prompt": "Hi", "id": 7}) + "\n")
    out = tmp_path / "out" / "samples.jsonl"
    argv = ["sample", "--model", str(model_dir), "--prompts", str(prompts), "--out", str(out), "--n", "3",
            "--max-new-tokens", "12", "--step-delimiter", "e", "--seed", "1"]
    assert main(argv) == 0
    assert "wrote 6 samples of 2 prompts" in capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["index"], r["sample"]) for r in rows] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert rows[3]["prompt"] == "Hi"
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    for r in rows:
        assert tokenizer.decode(r["tokens"], skip_special_tokens=True) == r["text"]
        assert r["finish"] in ("length", "eos") and 1 <= len(r["tokens"]) <= 12
        assert r["steps"] and all(0 <= s["confidence"] <= 1 for s in r["steps"])
        assert 0 <= r["confidence"] <= 1 and r["logprob"] < 0
    assert len({tuple(r["tokens"]) for r in rows}) > 2  # sampled, not copied
    # The same seed gives the same samples, whatever the batch size.
    again = tmp_path / "again.jsonl"
    argv[argv.index(str(out))] = str(again)
    assert main(argv + ["--batch-size", "1"]) == 0
    assert [json.loads(line)["tokens"] for line in again.read_text().splitlines()] == [r["tokens"] for r in rows]


def test_until_step_end_stops_at_the_delimiter(model_dir, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "abc"}) + "\n")
    out = tmp_path / "o.jsonl"
    argv = ["sample", "--model", str(model_dir), "--prompts", str(prompts), "--out", str(out), "--n", "16",
            "--max-new-tokens", "32", "--temperature", "1.0", "--stop", r"\n", "--until-step-end", "--step-delimiter", " "]
    assert main(argv) == 0
    finishes = set()
    for r in map(json.loads, out.read_text().splitlines()):
        text = r["text"]
        ends = [i for i in (text.find("\n"), text.find(" ")) if i >= 0]
        if r["finish"] in ("stop", "step"):
            assert len(text) == min(ends) + 1 and text[-1] == ("\n" if r["finish"] == "stop" else " ")
        else:
            assert not ends
        finishes.add(r["finish"])
    assert {"stop", "step"} <= finishes


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"prompt": "ok"}\n{"prompt": \n', "prompts.jsonl:2: not valid JSON"),
        ('{"prompt": "ok"}\n{"text": "x"}\n', "prompts.jsonl:2: expected an object with a string 'prompt'"),
        ('{"prompt": ""}\n', "prompts.jsonl:1: the prompt is empty"),
        ("\n", "prompts.jsonl: no prompts"),
    ],
)
def test_bad_prompt_files_name_the_line(model_dir, tmp_path, capsys, content, message):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(content)
    out = tmp_path / "out.jsonl"
    assert main(["sample", "--model", str(model_dir), "--prompts", str(prompts), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("caspo-jax sample: error:") and message in err and err.count("\n") == 1
    assert not out.exists()


def test_bad_sampling_arguments_exit_2(model_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "ok"}\n')
    base = ["sample", "--model", str(model_dir), "--prompts", str(prompts), "--out", str(tmp_path / "o.jsonl")]
    for extra, message in [(["--n", "0"], "--n must be >= 1"), (["--stop", "→"], "can never be generated"),
                           (["--top-p", "1.5"], "top_p")]:
        assert main(base + extra) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()
