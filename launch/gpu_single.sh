#!/usr/bin/env bash
# Runs `caspo-jax <command> --config CONFIG` on one machine with one or more NVIDIA GPUs.
#
#   launch/gpu_single.sh --config configs/caspo_qwen2.5_7b_instruct_math.yaml [--install] [--gpus 0,1,2,3]
#       [--command caspo] [--log FILE] [--dry-run] [-- key=value ...]
#
# One process drives every visible GPU (no jax.distributed needed): the mesh's -1 axis takes them
# all. --install first pip-installs jax[cuda12] and this package into the active Python. --gpus sets
# CUDA_VISIBLE_DEVICES. XLA may take 95% of each GPU's memory (XLA_PYTHON_CLIENT_MEM_FRACTION).
# --dry-run prints the exact commands, one per line, and runs nothing.
set -euo pipefail

die() {
  echo "gpu_single.sh: error: $*" >&2
  exit 2
}

CONFIG="" GPUS="" LOG="" COMMAND="caspo" INSTALL=0 DRY_RUN=0
JAX_SPEC="${CASPO_JAX_GPU_SPEC:-jax[cuda12]}"
while (($#)); do
  case "$1" in
    --config) CONFIG="${2:?--config needs a value}"; shift 2 ;;
    --gpus) GPUS="${2:?--gpus needs a value}"; shift 2 ;;
    --log) LOG="${2:?--log needs a value}"; shift 2 ;;
    --command) COMMAND="${2:?--command needs a value}"; shift 2 ;;
    --install) INSTALL=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
    --) shift; break ;;
    *) die "unknown argument '$1' (overrides go after --)" ;;
  esac
done
[[ -n "$CONFIG" ]] || die "--config is required (a YAML under configs/)"
[[ -f "$CONFIG" ]] || die "--config $CONFIG: no such file"
[[ -z "$GPUS" || "$GPUS" =~ ^[0-9]+(,[0-9]+)*$ ]] || die "--gpus $GPUS: expected device numbers like 0,1,2,3"

# shellcheck source=launch/lib.sh
source "$(dirname "$0")/lib.sh"

REPO="$(cd "$(dirname "$0")/.." && pwd)"
if ((INSTALL)); then
  run python -m pip install -U "$JAX_SPEC" -e "$REPO"
fi

environment=(env XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 TOKENIZERS_PARALLELISM=false)
[[ -n "$GPUS" ]] && environment+=(CUDA_VISIBLE_DEVICES="$GPUS")
job=("${environment[@]}" caspo-jax "$COMMAND" --config "$CONFIG" "$@")
if [[ -n "$LOG" ]]; then
  run bash -c "$(quote_line "${job[@]}") 2>&1 | tee $(quote_word "$LOG"); exit \${PIPESTATUS[0]}"
else
  run "${job[@]}"
fi
