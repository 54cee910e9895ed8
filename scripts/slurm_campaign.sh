#!/usr/bin/env bash
# A sharded latency campaign on SLURM: an array of shards, then a dependent merge.
#
#   scripts/slurm_campaign.sh submit OUTDIR NUM_SHARDS [--config.FIELD=VALUE ...]
#
# submits
#   1. an array job of NUM_SHARDS tasks: task i runs
#        python -m experiments.measure_latency --config.shard_index=i \
#          --config.num_shards=NUM_SHARDS --config.store=OUTDIR/shard_i.sqlite \
#          --workdir=OUTDIR/shard_i [--config.FIELD=VALUE ...]
#      (each shard its own store file: no two campaigns time into one store);
#   2. a merge job that starts when every task has ended (afterany: a failed
#      shard's finished rows are merged too; rerun the failed task to resume it):
#        python -m experiments.merge_stores --config.inputs=OUTDIR/shard_0.sqlite,... \
#          --config.out=OUTDIR/latency.sqlite --workdir=OUTDIR/merge
#
# The same config flags go to every shard (the arch list is a pure function of
# the config, so shards agree on it). OUTDIR must be on a file system every
# node sees. sbatch options come from the environment:
#   SBATCH_SHARD_ARGS   extra sbatch options of the array (default: one task per
#                       node, the whole node, e.g. "--partition=cpu --time=12:00:00")
#   SBATCH_MERGE_ARGS   extra sbatch options of the merge job
#   PYTHON              interpreter with ofa-jax installed (default: python)
#   DEPENDENCY          afterany (default) or afterok
#
# The modes "shard OUTDIR NUM_SHARDS [flags]" and "merge OUTDIR NUM_SHARDS" are
# what the jobs run; "shard" reads SLURM_ARRAY_TASK_ID.
set -euo pipefail

usage() {
  echo "usage: $0 submit|shard|merge OUTDIR NUM_SHARDS [--config.FIELD=VALUE ...]" >&2
  exit 2
}

[[ $# -ge 3 ]] || usage
mode=$1
outdir=$2
num_shards=$3
shift 3
[[ $num_shards =~ ^[1-9][0-9]*$ ]] || { echo "error: NUM_SHARDS: '$num_shards' is not an integer >= 1" >&2; exit 2; }
PYTHON=${PYTHON:-python}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# SLURM runs a copy of this script from its spool folder: the jobs get the checkout
# from the environment (set at submission).
repo=${OFA_JAX_REPO:-$(dirname "$here")}

case $mode in
  submit)
    mkdir -p "$outdir/logs"
    outdir=$(cd "$outdir" && pwd)
    # shellcheck disable=SC2086  # The *_ARGS variables hold several options.
    array_id=$(sbatch --parsable --job-name=ofa-latency --array="0-$((num_shards - 1))" \
      --nodes=1 --ntasks=1 --exclusive --export="ALL,OFA_JAX_REPO=$repo" ${SBATCH_SHARD_ARGS:-} \
      --output="$outdir/logs/shard_%a.out" \
      "$here/slurm_campaign.sh" shard "$outdir" "$num_shards" "$@")
    array_id=${array_id%%;*}
    # shellcheck disable=SC2086
    merge_id=$(sbatch --parsable --job-name=ofa-latency-merge \
      --dependency="${DEPENDENCY:-afterany}:$array_id" --nodes=1 --ntasks=1 \
      --export="ALL,OFA_JAX_REPO=$repo" \
      ${SBATCH_MERGE_ARGS:-} --output="$outdir/logs/merge.out" \
      "$here/slurm_campaign.sh" merge "$outdir" "$num_shards")
    echo "shards: job $array_id (array 0-$((num_shards - 1))); merge: job ${merge_id%%;*}"
    echo "merged store: $outdir/latency.sqlite"
    ;;
  shard)
    i=${SLURM_ARRAY_TASK_ID:?shard mode runs as a SLURM array task (SLURM_ARRAY_TASK_ID)}
    cd "$repo"
    exec "$PYTHON" -m experiments.measure_latency --config.shard_index="$i" \
      --config.num_shards="$num_shards" --config.store="$outdir/shard_$i.sqlite" \
      --workdir="$outdir/shard_$i" "$@"
    ;;
  merge)
    inputs=()
    for ((i = 0; i < num_shards; i++)); do
      if [[ -s $outdir/shard_$i.sqlite ]]; then
        inputs+=("$outdir/shard_$i.sqlite")
      else
        echo "warning: shard $i has no store ($outdir/shard_$i.sqlite); rerun it, then merge again" >&2
      fi
    done
    [[ ${#inputs[@]} -gt 0 ]] || { echo "error: no shard store in $outdir" >&2; exit 2; }
    cd "$repo"
    joined=$(IFS=,; echo "${inputs[*]}")
    exec "$PYTHON" -m experiments.merge_stores --config.inputs="$joined" \
      --config.out="$outdir/latency.sqlite" --workdir="$outdir/merge"
    ;;
  *) usage ;;
esac
