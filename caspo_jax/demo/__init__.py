"""`caspo-jax demo`: the whole of CASPO and CaT on a laptop CPU, in a world where every step is checkable.

The world is caspo_jax.data.arith: chains of 3-5 operations (+d, -d, *d) on values in [0, 100), one
operation per step, with an exact step verifier. The base model (demo.base, shipped in base_model/) is
a 0.34M-parameter Qwen3 over characters trained from scratch by supervised training on solutions of
which a quarter carry one wrong intermediate value that the next step ignores, so it writes right
answers through wrong steps, the failure CASPO targets.

Files: world.py (question split, supervised data), base.py (tokenizer, model, base training),
settings.py (what a run does), step_eval.py (step-level figures), pipeline.py (the stages),
summary.py (report and plots).

Output layout of `caspo-jax demo --out DIR` (every file written once, atomically; a rerun resumes):

    DIR/settings.json                    the run's settings (a rerun must ask for the same)
    DIR/base/                            --from-scratch only: tokenizer, random/, sft.jsonl, sft/model (the base)
    DIR/caspo/round_1/                   samples.jsonl, annotated.parquet, pairs.jsonl, pairs_stats.json,
                                         train/ (DPO run, train/model), eval/, summary.json (caspo.loop)
    DIR/control/                         sft.jsonl (verified own samples) and train/model: the SFT control
    DIR/steps/{base,caspo,control}/      samples.jsonl, annotated.parquet, metrics.json: step-level figures
    DIR/decoders/{base,caspo,control}/{greedy,sc,cat}/   results.jsonl, metrics.json, report.md, plots
    DIR/model/                           the CASPO model as a Hugging Face folder (transformers loads it)
    DIR/dataset/                         the step-wise dataset of the CASPO round (parquet + README card)
    DIR/report.json                      settings, pairs, step_level and decoders per model, caspo_vs_base
    DIR/report.md                        the summary table and the plots
    DIR/reliability_{model}.png          reliability diagram of step confidence, per model
    DIR/confidence_hist_{model}.png      step confidence of right vs wrong steps, per model
    DIR/accuracy_vs_tokens.png           accuracy against tokens per question, 3 decoders x 3 models
"""
