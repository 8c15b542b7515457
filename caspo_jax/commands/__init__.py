"""The subcommands of `caspo-jax`, grouped by what they work on; `caspo_jax.cli` registers them."""
