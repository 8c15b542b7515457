"""launch/: the scripts parse (`bash -n`), and --dry-run prints exactly the commands a real run executes.

A real run is simulated with stand-ins for gcloud, tar, python and caspo-jax on PATH that record their
argv: the printed lines, split as a shell would, must equal the recorded calls, in order.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
LAUNCH = ROOT / "launch"
CONFIG = "configs/caspo_qwen3_8b_base_math.yaml"
RECORDER = """#!/usr/bin/env python3
import json, os, sys
with open(os.environ["RECORD"], "a") as f:
    f.write(json.dumps([os.path.basename(sys.argv[0]), *sys.argv[1:], os.environ.get("CUDA_VISIBLE_DEVICES")]) + "\\n")
"""
POD = ["--name", "caspo", "--zone", "us-east5-a", "--type", "v5p-64", "--project", "my-proj", "--config", CONFIG]


@pytest.fixture
def fake_tools(tmp_path) -> dict[str, str]:
    """An environment whose PATH finds recording stand-ins for the tools the scripts call."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("gcloud", "tar", "python", "caspo-jax"):
        (bin_dir / tool).write_text(RECORDER)
        (bin_dir / tool).chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RECORD": str(tmp_path / "calls.jsonl")}


def launch(script: str, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(LAUNCH / script), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip


def recorded(env: dict[str, str]) -> list[list[str]]:
    path = Path(env["RECORD"])
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.parametrize("script", ["tpu_pod.sh", "gpu_single.sh", "lib.sh"])
def test_scripts_parse(script):
    subprocess.run(["bash", "-n", str(LAUNCH / script)], check=True, timeout=30)


def test_tpu_pod_dry_run_prints_the_gcloud_commands_and_runs_none(fake_tools):
    done = launch("tpu_pod.sh", ["--dry-run", "--create", "--delete", *POD, "--", "output_dir=/mnt/runs/a"], fake_tools)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert recorded(fake_tools) == []
    assert lines[0] == (
        "gcloud compute tpus tpu-vm create caspo --zone=us-east5-a --project=my-proj --accelerator-type=v5p-64 "
        "--version=v2-alpha-tpuv5"
    )
    assert lines[1].startswith("tar -czf ")
    assert lines[2].startswith("gcloud compute tpus tpu-vm scp ") and f" {CONFIG} " in lines[2]
    assert lines[2].endswith("--zone=us-east5-a --project=my-proj --worker=all")
    install, job = shlex.split(lines[3]), shlex.split(lines[4])
    assert install[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"] and "--worker=all" in install
    assert "pip install -q 'jax[tpu]' -e ~/caspo-jax" in install[-1]
    assert job[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "caspo"] and "--worker=all" in job
    assert job[-1] == (
        "--command=cd ~/caspo-jax && CASPO_JAX_DISTRIBUTED=1 ~/caspo-venv/bin/caspo-jax caspo "
        "--config caspo_qwen3_8b_base_math.yaml output_dir=/mnt/runs/a"
    )
    assert lines[5] == "gcloud compute tpus tpu-vm delete caspo --zone=us-east5-a --project=my-proj --quiet"
    assert len(lines) == 6


@pytest.mark.parametrize("extra", [[], ["--create", "--spot", "--setup", "mount-it /mnt/runs"], ["--detach"]])
def test_tpu_pod_runs_exactly_what_the_dry_run_prints(fake_tools, extra):
    overrides = ["--", "output_dir=/mnt/runs/a", "note=it's here"]
    dry = launch("tpu_pod.sh", ["--dry-run", *extra, *POD, *overrides], fake_tools)
    real = launch("tpu_pod.sh", [*extra, *POD, *overrides], fake_tools)
    assert dry.returncode == real.returncode == 0, dry.stderr + real.stderr
    assert dry.stdout == real.stdout
    assert [call[:-1] for call in recorded(fake_tools)] == [shlex.split(line) for line in dry.stdout.splitlines()]
    job = shlex.split(dry.stdout.splitlines()[-1])[-1]
    # The override reaches caspo-jax on the worker as one argument, quote and all.
    words = shlex.split(job.removeprefix("--command="))
    if "--detach" in extra:  # nohup bash -c 'JOB' > ~/caspo-jax.log 2>&1 < /dev/null &
        assert words[:3] == ["nohup", "bash", "-c"] and words[4:] == [">", "~/caspo-jax.log", "2>&1", "<", "/dev/null", "&"]
        words = shlex.split(words[3])
    assert "CASPO_JAX_DISTRIBUTED=1" in words
    assert words[-2:] == ["output_dir=/mnt/runs/a", "note=it's here"]


def test_gpu_single_runs_exactly_what_the_dry_run_prints(fake_tools):
    args = ["--install", "--gpus", "0,1", "--config", "configs/caspo_tiny_cpu.yaml", "--", "rounds=1"]
    dry = launch("gpu_single.sh", ["--dry-run", *args], fake_tools)
    real = launch("gpu_single.sh", args, fake_tools)
    assert dry.returncode == real.returncode == 0, dry.stderr + real.stderr
    assert dry.stdout == real.stdout
    assert dry.stdout.splitlines()[1] == (
        "env XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 TOKENIZERS_PARALLELISM=false CUDA_VISIBLE_DEVICES=0,1 "
        "caspo-jax caspo --config configs/caspo_tiny_cpu.yaml rounds=1"
    )
    calls = recorded(fake_tools)
    assert calls[0][:-1] == ["python", "-m", "pip", "install", "-U", "jax[cuda12]", "-e", str(ROOT)]
    assert calls[1] == ["caspo-jax", "caspo", "--config", "configs/caspo_tiny_cpu.yaml", "rounds=1", "0,1"]


@pytest.mark.parametrize(
    "script, args, message",
    [
        ("tpu_pod.sh", ["--name", "x", "--zone", "z", "--type", "v5p-8"], "--config is required"),
        ("tpu_pod.sh", ["--name", "x", "--zone", "z", "--type", "v9-8", "--config", CONFIG], "--type v9-8"),
        ("tpu_pod.sh", [*POD, "--detach", "--delete"], "--delete cannot follow a --detach"),
        ("tpu_pod.sh", [*POD, "rounds=3"], "overrides go after --"),
        ("gpu_single.sh", ["--config", "configs/nope.yaml"], "configs/nope.yaml: no such file"),
        ("gpu_single.sh", ["--config", CONFIG, "--gpus", "a,b"], "--gpus a,b"),
    ],
)
def test_bad_arguments_exit_2_naming_the_problem_and_run_nothing(fake_tools, script, args, message):
    done = launch(script, args, fake_tools)
    assert done.returncode == 2 and message in done.stderr
    assert recorded(fake_tools) == []
