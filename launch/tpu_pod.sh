#!/usr/bin/env bash
# Runs `caspo-jax <command> --config CONFIG` on every worker of a Cloud TPU VM slice (multi-host).
#
#   launch/tpu_pod.sh --name caspo --zone us-east5-a --type v5p-64 \
#       --config configs/caspo_qwen3_8b_base_math.yaml [--create] [--delete] [--project P] [--spot] \
#       [--version RUNTIME] [--setup 'CMD'] [--detach] [--dry-run] [-- key=value ...]
#
# Steps (each a gcloud command; --dry-run prints them exactly, one per line, and runs nothing):
#   1. --create: `gcloud compute tpus tpu-vm create` the slice.
#   2. copy: pack this checkout (no .git, runs/, caches) and the config; scp both to every worker.
#   3. install: unpack into ~/caspo-jax, make ~/caspo-venv, pip install jax[tpu] and the package;
#      then --setup's command, if any (e.g. mount the shared output folder), on every worker.
#   4. run: `caspo-jax <command> --config CONFIG [overrides]` on every worker at once (--worker=all),
#      with CASPO_JAX_DISTRIBUTED=1 so each process calls jax.distributed.initialize(), which finds
#      the coordinator (worker 0) and the process ids from the TPU VM metadata. --detach leaves it
#      running under nohup (log: ~/caspo-jax.log on each worker).
#   5. --delete: delete the slice when the run returns (not with --detach).
# output_dir (and the model folder) must be one path every worker sees: see launch/README.md.
set -euo pipefail

usage() {
  sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
die() {
  echo "tpu_pod.sh: error: $*" >&2
  exit 2
}

NAME="" ZONE="" TYPE="" CONFIG="" PROJECT="" VERSION="" SETUP="" COMMAND="caspo"
CREATE=0 DELETE=0 DRY_RUN=0 SPOT=0 DETACH=0
JAX_SPEC="${CASPO_JAX_TPU_SPEC:-jax[tpu]}"
while (($#)); do
  case "$1" in
    --name) NAME="${2:?--name needs a value}"; shift 2 ;;
    --zone) ZONE="${2:?--zone needs a value}"; shift 2 ;;
    --type) TYPE="${2:?--type needs a value}"; shift 2 ;;
    --config) CONFIG="${2:?--config needs a value}"; shift 2 ;;
    --project) PROJECT="${2:?--project needs a value}"; shift 2 ;;
    --version) VERSION="${2:?--version needs a value}"; shift 2 ;;
    --setup) SETUP="${2:?--setup needs a value}"; shift 2 ;;
    --command) COMMAND="${2:?--command needs a value}"; shift 2 ;;
    --create) CREATE=1; shift ;;
    --delete) DELETE=1; shift ;;
    --spot) SPOT=1; shift ;;
    --detach) DETACH=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) usage ;;
    --) shift; break ;;
    *) die "unknown argument '$1' (overrides go after --)" ;;
  esac
done
OVERRIDES=("$@")

[[ -n "$NAME" ]] || die "--name is required (the TPU VM name)"
[[ -n "$ZONE" ]] || die "--zone is required (e.g. us-east5-a for v5p)"
[[ -n "$TYPE" ]] || die "--type is required (an accelerator type such as v4-8, v5litepod-16, v5p-64, v6e-16)"
[[ -n "$CONFIG" ]] || die "--config is required (a YAML under configs/)"
[[ -f "$CONFIG" ]] || die "--config $CONFIG: no such file"
((DETACH && DELETE)) && die "--delete cannot follow a --detach run (it would delete the slice under it)"

if [[ -z "$VERSION" ]]; then  # the TPU VM runtime image for the chip generation
  case "$TYPE" in
    v4-*) VERSION="tpu-ubuntu2204-base" ;;
    v5litepod-* | v5e-*) VERSION="v2-alpha-tpuv5-lite" ;;
    v5p-*) VERSION="v2-alpha-tpuv5" ;;
    v6e-*) VERSION="v2-alpha-tpuv6e" ;;
    *) die "--type $TYPE: unknown generation; pass --version with its TPU VM runtime" ;;
  esac
fi
TYPE="${TYPE/#v5e-/v5litepod-}"  # gcloud names v5e slices v5litepod-N

# shellcheck source=launch/lib.sh
source "$(dirname "$0")/lib.sh"

GCLOUD=(gcloud compute tpus tpu-vm)
WHERE=(--zone="$ZONE")
[[ -n "$PROJECT" ]] && WHERE+=(--project="$PROJECT")
REPO="$(cd "$(dirname "$0")/.." && pwd)"
ARCHIVE="${TMPDIR:-/tmp}/caspo-jax-$NAME.tar.gz"
CONFIG_NAME="$(basename "$CONFIG")"

if ((CREATE)); then
  create=("${GCLOUD[@]}" create "$NAME" "${WHERE[@]}" --accelerator-type="$TYPE" --version="$VERSION")
  ((SPOT)) && create+=(--spot)
  run "${create[@]}"
fi

run tar -czf "$ARCHIVE" -C "$REPO" --exclude=.git --exclude=runs --exclude=__pycache__ --exclude='*.egg-info' \
  --exclude=.pytest_cache --exclude=.venv .
run "${GCLOUD[@]}" scp "$ARCHIVE" "$CONFIG" "$NAME:~/" "${WHERE[@]}" --worker=all

install="mkdir -p ~/caspo-jax && tar -xzf ~/$(basename "$ARCHIVE") -C ~/caspo-jax"
install+=" && cp ~/$CONFIG_NAME ~/caspo-jax/$CONFIG_NAME"
install+=" && (python3 -m venv ~/caspo-venv || (sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv"
install+=" && python3 -m venv ~/caspo-venv)) && ~/caspo-venv/bin/pip install -q -U pip"
install+=" && ~/caspo-venv/bin/pip install -q $(quote_word "$JAX_SPEC") -e ~/caspo-jax"
[[ -n "$SETUP" ]] && install+=" && $SETUP"
run "${GCLOUD[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all --command="$install"

job="cd ~/caspo-jax && CASPO_JAX_DISTRIBUTED=1 ~/caspo-venv/bin/caspo-jax $COMMAND --config $CONFIG_NAME"
for override in "${OVERRIDES[@]}"; do
  job+=" $(quote_word "$override")"
done
((DETACH)) && job="nohup bash -c $(quote_word "$job") > ~/caspo-jax.log 2>&1 < /dev/null &"
run "${GCLOUD[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all --command="$job"

if ((DELETE)); then
  run "${GCLOUD[@]}" delete "$NAME" "${WHERE[@]}" --quiet
fi
