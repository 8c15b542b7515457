"""Test set-up: 8 fake CPU devices stand in for a TPU mesh. XLA_FLAGS must be set before jax imports."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def fast_demo_dir(tmp_path_factory):
    """`caspo-jax demo --fast --seed 0` run once per session (in process); its --out folder."""
    from caspo_jax.cli import main

    out = tmp_path_factory.mktemp("demo") / "fast"
    assert main(["demo", "--fast", "--seed", "0", "--out", str(out)]) == 0
    return out
