"""CASPO's rounds and their stage bookkeeping: sample -> annotate -> pair -> DPO -> evaluate.

    output_dir/
      config.yaml                 the resolved CaspoConfig
      init/model                  the tiny arith model (only when no model is given), init/warmup its SFT
      round_{r}/samples.jsonl     N solutions per training question, with token confidences
      round_{r}/annotated.parquet the round's step-wise rows (caspo.dataset.SCHEMA)
      round_{r}/pairs.jsonl       confidence-filtered step pairs (prompt/chosen/rejected + provenance)
      round_{r}/pairs_stats.json  thresholds and counts per pair kind
      round_{r}/train/            the DPO run (checkpoints, metrics, model/ = the next round's policy)
      round_{r}/eval/             held-out evaluation of the round's policy
      round_{r}/benchmarks/<name> evaluation on each of cfg.eval_benchmarks
      round_{r}/summary.json      the round's numbers: written last, it marks the round finished
      dataset/                    the step-wise dataset of all finished rounds (parquet + README card)
      summary.json                every round's numbers

Every stage writes its output once, atomically (temp file, then rename), and is skipped when that
output exists, so a killed run restarts at the first unfinished stage; training resumes from its
last checkpoint and evaluation from its results file. The policy of round r is round r-1's
train/model; the reference of round r is its starting policy, whose log-probs the DPO trainer
precomputes (one model in memory). A round with zero pairs skips training, evaluates the unchanged
policy and stops the run (later rounds would sample from the same policy again).

Multi-host: every process runs every stage (sampling and training are collective); process 0 alone
writes (`files.is_primary`), and all processes meet (`mesh.sync`) after each stage, before any of them
reads what was written or checks whether the next stage's output exists. `output_dir` must be one
folder that every host sees (NFS, Filestore, a gcsfuse bucket mount).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import yaml

from caspo_jax import files
from caspo_jax.caspo import annotate as annotate_lib
from caspo_jax.caspo import dataset as dataset_lib
from caspo_jax.caspo import pairs as pairs_lib
from caspo_jax.caspo.label import Labeler, OutcomeLabeler, VerifierLabeler, load_judge
from caspo_jax.config import CaspoConfig, DataConfig, ModelConfig, OptimConfig, TrainConfig
from caspo_jax.data import arith, jsonl, sources
from caspo_jax.eval import report
from caspo_jax.data.sources import Problem

Progress = Callable[[str], None]
WARMUP_VARIANTS = 4  # warm-up solutions per training question: clean and with one wrong step, alternating


def write_jsonl(path: Path, records: Sequence[dict]) -> None:
    """Records as JSON lines, written atomically by process 0 (the others skip)."""
    if files.is_primary():
        files.write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def _stage_done(name: str) -> None:
    """Every process waits here until all have finished stage `name` (process 0 has written it)."""
    from caspo_jax.parallel import mesh as mesh_lib

    mesh_lib.sync(name)


def read_jsonl(path: Path) -> list[dict]:
    return [record for _, record in jsonl.records(path)]


def load_problems(cfg: CaspoConfig) -> tuple[list[Problem], list[Problem]]:
    """(training questions, held-out questions); every question must carry a reference answer."""
    total = cfg.num_heldout + cfg.num_train
    if cfg.data == "arith":
        rng = np.random.default_rng(cfg.seed)
        made = [arith.sample_problem(rng, cfg.arith_min_ops, cfg.arith_max_ops) for _ in range(total)]
        problems = [Problem(f"arith-{i}", p.question, str(p.answer)) for i, p in enumerate(made)]
    elif cfg.data == "jsonl":
        problems = sources.load_jsonl_problems(cfg.data_path, cfg.question_field, cfg.answer_field, limit=total)
    else:
        problems = sources.load_benchmark(cfg.data, cfg.data_path, cfg.data_split, limit=total)
    source = cfg.data_path or cfg.data
    for p in problems:
        if not str(p.answer).strip():
            raise ValueError(f"{source}: question {p.id} has no reference answer (field {cfg.answer_field!r})")
    if len(problems) <= cfg.num_heldout:
        raise ValueError(f"{source}: {len(problems)} questions, but num_heldout={cfg.num_heldout} leaves none to train on")
    return problems[cfg.num_heldout :], problems[: cfg.num_heldout]


def make_labeler(name: str, judge_model: str | None = None, judge_max_new_tokens: int = 64, mesh=None) -> Labeler:
    """'verifier' (arith steps), 'outcome' or 'judge' (loads judge_model; a failure is a ValueError)."""
    if name == "verifier":
        return VerifierLabeler(lambda q, k, s: arith.verify_step(arith.parse_question(q), k, s))
    if name == "outcome":
        return OutcomeLabeler()
    if not judge_model:
        raise ValueError("labeler 'judge' needs a judge model folder")
    return load_judge(judge_model, mesh=mesh, max_new_tokens=judge_max_new_tokens)


def tiny_model_config() -> ModelConfig:
    """The arith demo's policy: a small Qwen3 over the character vocabulary."""
    from caspo_jax.data.char_tokenizer import VOCAB_SIZE

    return ModelConfig(
        "qwen3", vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=192, num_layers=2, num_heads=4,
        num_kv_heads=2, head_dim=16, qk_norm=True, rope_theta=1e4, tie_word_embeddings=True,
        max_position_embeddings=1024, bos_token_id=1, eos_token_ids=(2,), pad_token_id=0,
    )


def initial_policy(cfg: CaspoConfig, out: Path, train_qs: Sequence[Problem], progress: Progress) -> Path:
    """The policy of round 1: cfg.model, or the tiny arith model, built and then warmed up by SFT.

    A random model writes no right step, so it makes no pairs. The warm-up fits the training
    questions' solutions, half clean and half with one wrong intermediate result, so that the tiny
    policy writes the mixture of right and wrong steps that CASPO feeds on. It is a demo device for
    CPU runs: it says nothing about generalisation, and real runs start from a real model.
    """
    if cfg.model:
        return Path(cfg.model)
    import jax

    from caspo_jax.data.char_tokenizer import save_char_tokenizer
    from caspo_jax.model import hf, qwen
    from caspo_jax.train import trainer

    random_dir, warm = out / "init" / "model", out / "init" / "warmup"
    if not random_dir.exists():
        config = tiny_model_config()
        tok_dir = save_char_tokenizer(out / "init" / "tokenizer")
        hf.save(random_dir, config, qwen.init_params(config, jax.random.key(cfg.seed)), tokenizer_dir=tok_dir)
    _stage_done(f"{random_dir}")
    if not cfg.warmup_sft_steps:
        return random_dir
    if not (warm / "model").exists():
        from caspo_jax.data import prompts

        rng = np.random.default_rng(cfg.seed + 1)
        records = []
        for q in train_qs:
            p = arith.parse_question(q.question)
            for i in range(WARMUP_VARIANTS):
                text = p.solution() if i % 2 else arith.noisy_solution(p, rng)[0]
                records.append({"prompt": prompts.build_prompt(q.question), "completion": text})
        write_jsonl(out / "init" / "sft.jsonl", records)
        _stage_done(f"{out / 'init' / 'sft.jsonl'}")
        sft = TrainConfig(
            mode="sft", batch_size=16, max_steps=cfg.warmup_sft_steps, log_every=100, save_every=cfg.warmup_sft_steps,
            mesh=cfg.train.mesh, optim=OptimConfig(learning_rate=1e-2, warmup_steps=20, schedule="cosine"),
            data=DataConfig(max_length=256, add_eos=True, seed=cfg.seed),
        )
        began = time.perf_counter()
        trainer.train(sft, random_dir, out / "init" / "sft.jsonl", warm, resume=True)
        progress(f"[init] warm-up SFT: {cfg.warmup_sft_steps} steps ({time.perf_counter() - began:.1f} s)")
    return warm / "model"


def load_sampler(policy: Path, mesh=None):
    """A Sampler for the HF model folder `policy` (weights and tokenizer)."""
    from caspo_jax.infer.sampler import Sampler
    from caspo_jax.model import hf
    from caspo_jax.model.tokenizer import load_tokenizer

    config, params = hf.load(policy, mesh=mesh)
    return Sampler(config, params, load_tokenizer(policy), mesh=mesh)


def _solutions(samples: list[dict], rows: list[dict]) -> list[pairs_lib.Solution]:
    """Rebuilds the annotated solutions from samples.jsonl and annotated.parquet (a resumed round)."""
    prompts = {(s["question_id"], s["sample"]): s["prompt"] for s in samples}
    grouped: dict[tuple, list[dict]] = {}
    for r in rows:
        grouped.setdefault((r["question_id"], r["sample"]), []).append(r)
    out = []
    for key, steps in grouped.items():
        last = len(steps) - 1
        out.append(pairs_lib.Solution(key[0], prompts[key], tuple(
            pairs_lib.ScoredStep(r["text"], r["step_confidence"], r["label"], annotate_lib.DELIMITER if k < last else "")
            for k, r in enumerate(sorted(steps, key=lambda r: r["step_index"]))
        )))
    return out


def _thresholds(cfg: CaspoConfig, solutions: list[pairs_lib.Solution]) -> tuple[float, float]:
    if cfg.low_quantile is None or not solutions:
        return cfg.tau_low, cfg.tau_high
    return pairs_lib.quantile_thresholds(solutions, cfg.low_quantile, cfg.high_quantile)


def run_round(
    cfg: CaspoConfig, r: int, policy: Path, train_qs: Sequence[Problem], heldout: Sequence[Problem], labeler: Labeler,
    mesh, progress: Progress,
) -> dict:
    """One round's stages (each skipped when its output exists); returns the round's summary."""
    from caspo_jax.eval.runner import evaluate
    from caspo_jax.train import trainer

    folder = Path(cfg.output_dir) / f"round_{r}"

    def say(stage: str, message: str, began: float) -> None:
        progress(f"[round {r}/{cfg.rounds}] {stage}: {message} ({time.perf_counter() - began:.1f} s)")

    sampler = None
    began = time.perf_counter()
    if not (folder / "samples.jsonl").exists():
        sampler = load_sampler(policy, mesh)
        samples = annotate_lib.sample_solutions(
            sampler, train_qs, cfg.samples_per_question, temperature=cfg.temperature, top_p=cfg.top_p,
            max_new_tokens=cfg.max_new_tokens, signal=cfg.signal, seed=cfg.seed * 1000 + r,
        )
        write_jsonl(folder / "samples.jsonl", samples)
        say("samples", f"{len(samples)} solutions of {len(train_qs)} questions", began)
    _stage_done(f"{folder / 'samples.jsonl'}")
    samples = read_jsonl(folder / "samples.jsonl")

    began = time.perf_counter()
    if not (folder / "annotated.parquet").exists():
        from caspo_jax.infer import stops
        from caspo_jax.model.tokenizer import load_tokenizer
        from caspo_jax.model import hf

        pieces = stops.token_pieces(load_tokenizer(policy), hf.read_config(policy).vocab_size)
        _, rows = annotate_lib.annotate(samples, labeler, pieces, splitter=cfg.step_splitter,
                                        aggregation=cfg.step_aggregation, round_index=r)
        if files.is_primary():
            dataset_lib.write_parquet(rows, folder / "annotated.parquet")
        right = np.mean([row["label"] for row in rows]) if rows else 0.0
        say("annotate", f"{len(rows)} steps, {right:.0%} labelled right by {labeler.name}", began)
    _stage_done(f"{folder / 'annotated.parquet'}")
    solutions = _solutions(samples, dataset_lib.read_parquet(folder / "annotated.parquet"))

    began = time.perf_counter()
    if not (folder / "pairs.jsonl").exists():
        tau_low, tau_high = _thresholds(cfg, solutions)
        candidates = pairs_lib.find_candidates(solutions, tau_low, tau_high)
        siblings, runner_up = {}, {}
        if candidates:
            sampler = sampler or load_sampler(policy, mesh)
            siblings = annotate_lib.sample_siblings(
                sampler, candidates, labeler, {p.id: p for p in train_qs}, num_siblings=cfg.siblings,
                temperature=cfg.temperature, max_new_tokens=cfg.sibling_max_new_tokens, signal=cfg.signal,
                splitter=cfg.step_splitter, aggregation=cfg.step_aggregation, seed=cfg.seed * 1000 + 500 + r,
            )
            unmatched = [c for c in candidates if not any(not s.label for s in siblings.get(c.prefix_key, ()))]
            runner_up = annotate_lib.runner_up_steps(
                sampler, unmatched, labeler, {p.id: p for p in train_qs}, max_new_tokens=cfg.sibling_max_new_tokens,
                signal=cfg.signal, splitter=cfg.step_splitter, aggregation=cfg.step_aggregation,
            )
        pairs, counts = pairs_lib.build_pairs(candidates, siblings, runner_up, delimiter=annotate_lib.DELIMITER)
        stats = {"tau_low": tau_low, "tau_high": tau_high, "candidates": len(candidates), "pairs": len(pairs), **counts}
        report.write_json(folder / "pairs_stats.json", stats)
        write_jsonl(folder / "pairs.jsonl", [dataclasses.asdict(p) for p in pairs])
        say("pairs", ", ".join(f"{k}={v}" for k, v in stats.items() if k not in ("tau_low", "tau_high"))
            + f", tau=({tau_low:.3f}, {tau_high:.3f})", began)
    _stage_done(f"{folder / 'pairs.jsonl'}")
    stats = json.loads((folder / "pairs_stats.json").read_text())
    del sampler  # the trainer loads the policy itself

    began = time.perf_counter()
    trained = stats["pairs"] > 0
    if trained:
        if not (folder / "train" / "model").exists():
            final = trainer.train(cfg.train, policy, folder / "pairs.jsonl", folder / "train", resume=True)
            say("train", f"loss {final.get('loss', float('nan')):.4f}", began)
        policy = folder / "train" / "model"
    else:
        progress(f"[round {r}/{cfg.rounds}] train: no pairs this round ({stats}); skipping training and stopping "
                 "after this round's evaluation")

    began = time.perf_counter()
    sampler = load_sampler(policy, mesh)
    metrics = evaluate(sampler, heldout, cfg.eval, folder, "eval", progress=False)
    say("eval", f"held-out accuracy {metrics['accuracy']:.3f}, ece {metrics['ece']:.3f}, auroc {metrics['auroc']}", began)
    benchmarks = {}
    for name in cfg.eval_benchmarks:
        began = time.perf_counter()
        data = Path(cfg.eval_data_dir) / name if cfg.eval_data_dir else None
        problems = sources.load_benchmark(name, data, None, limit=cfg.eval_limit)
        benchmarks[name] = evaluate(sampler, problems, cfg.eval, folder / "benchmarks", name, progress=False)
        say(f"eval {name}", f"accuracy {benchmarks[name]['accuracy']:.3f}", began)
    summary = {"round": r, "policy": str(policy), "trained": trained, "pairs": stats, "eval": metrics,
               "benchmarks": benchmarks}
    report.write_json(folder / "summary.json", summary)
    _stage_done(f"{folder / 'summary.json'}")
    return summary


def run(cfg: CaspoConfig, progress: Progress = print) -> list[dict]:
    """Runs (or resumes) every round; returns the round summaries."""
    from caspo_jax.parallel import mesh as mesh_lib

    mesh_lib.initialize_distributed()  # before anything touches devices
    out = Path(cfg.output_dir)
    if files.is_primary():
        out.mkdir(parents=True, exist_ok=True)
        files.write_text(out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    train_qs, heldout = load_problems(cfg)
    mesh = mesh_lib.make_mesh(cfg.mesh)
    labeler = make_labeler(cfg.labeler, cfg.judge_model, cfg.judge_max_new_tokens, mesh)
    policy = initial_policy(cfg, out, train_qs, progress)
    summaries = []
    for r in range(1, cfg.rounds + 1):
        done = out / f"round_{r}" / "summary.json"
        if done.exists():
            summary = json.loads(done.read_text())
            progress(f"[round {r}/{cfg.rounds}] finished earlier: accuracy {summary['eval']['accuracy']:.3f}")
        else:
            summary = run_round(cfg, r, policy, train_qs, heldout, labeler, mesh, progress)
        summaries.append(summary)
        policy = Path(summary["policy"])
        tables = [out / f"round_{k}" / "annotated.parquet" for k in range(1, r + 1)]
        if files.is_primary():
            dataset_lib.publish(out / "dataset", tables, signal=cfg.signal, aggregation=cfg.step_aggregation)
        if not summary["trained"]:
            progress(f"round {r} made no pairs: stopping (lower tau_high / raise tau_low, or sample more)")
            break
    report.write_json(out / "summary.json", {"rounds": summaries, "final_policy": str(policy)})
    return summaries
