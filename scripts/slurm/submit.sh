#!/bin/bash
# Submit the whole pipeline to SLURM from the repository root: a job array training extra shadow
# models, a job array caching every model's outputs once they are trained, and the attack once
# everything is cached (afterok dependencies: a failed task holds back what follows it).
# Prints the three job ids. Every job is submitted with --export=ALL (a site may set
# SBATCH_EXPORT=NONE), the caching and the attack for SCENARIO only.
#
#   CHALLENGE=cifar10 SCENARIO=cifar10_lo N=128 TASKS=8 PARTITION=gpu GPUS=1 scripts/slurm/submit.sh
#
# Environment (the job scripts' own variables, e.g. DATA_DIR, DESIGN, TRAIN_ARGS, PREDS_ARGS,
# ATTACK_ARGS, are passed on to them):
#   TASKS       array size of the training job (default 4); PRED_TASKS: of the caching job (TASKS)
#   PARTITION   partition of all three jobs (default: the cluster's default partition)
#   GPUS        GPUs per array task (gres gpu:GPUS; default none: CPU only)
#   SBATCH_ARGS more sbatch options for all three jobs, e.g. "--time=12:00:00 --account=lab
#               --cpus-per-task=8 --mem=32G" (each task then runs with --threads 8)
#   LOG_DIR     where the jobs' logs go (default slurm-logs)
#   DRY_RUN=1   print the sbatch commands (on stderr) instead of running them
set -euo pipefail
: "${CHALLENGE:?set CHALLENGE (cifar10 or purchase100)}" "${SCENARIO:?set SCENARIO, e.g. cifar10_lo}" "${N:?set N, the number of shadow models}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
tasks="${TASKS:-4}"
pred_tasks="${PRED_TASKS:-$tasks}"
log_dir="${LOG_DIR:-slurm-logs}"
for v in "$tasks" "$pred_tasks"; do
    [[ "$v" =~ ^[1-9][0-9]*$ ]] || { echo "submit.sh: TASKS and PRED_TASKS must be positive integers, got '$v'" >&2; exit 2; }
done
export CHALLENGE SCENARIO N
common=(--parsable --chdir="$root")
[[ -n "${PARTITION:-}" ]] && common+=(--partition="$PARTITION")
# SBATCH_ARGS is split into options on purpose.
# shellcheck disable=SC2206
[[ -n "${SBATCH_ARGS:-}" ]] && common+=($SBATCH_ARGS)
gpus=()
[[ -n "${GPUS:-}" && "${GPUS}" != 0 ]] && gpus=(--gres="gpu:$GPUS")
submit() {  # submit NAME OPTIONS... SCRIPT: the job id (a dry run: prints the command, returns <NAME>)
    local name="$1" out id
    shift
    if [[ -n "${DRY_RUN:-}" ]]; then
        echo "sbatch $*" >&2
        echo "<$name>"
        return
    fi
    out=$(sbatch "$@")
    id="${out%%;*}"  # --parsable prints "id" or, on a multi-cluster site, "id;cluster"
    [[ "$id" =~ ^[0-9]+$ ]] || { echo "submit.sh: sbatch printed '$out' for the $name job, not a job id" >&2; exit 1; }
    echo "$id"
}
[[ -n "${DRY_RUN:-}" ]] || (cd "$root" && mkdir -p "$log_dir")  # sbatch does not create it
array_log="$log_dir/%x_%A_%a.out"
train=$(submit train "${common[@]}" ${gpus[@]+"${gpus[@]}"} --output="$array_log" --array="0-$((tasks - 1))" \
    --export=ALL,SHARDS="$tasks" "$here/train_shadows.sbatch")
preds=$(submit preds "${common[@]}" ${gpus[@]+"${gpus[@]}"} --output="$array_log" --array="0-$((pred_tasks - 1))" \
    --export=ALL,SHARDS="$pred_tasks" --dependency="afterok:$train" "$here/save_preds.sbatch")
attack=$(submit attack "${common[@]}" --output="$log_dir/%x_%j.out" --export=ALL \
    --dependency="afterok:$train:$preds" "$here/attack.sbatch")
echo "$train $preds $attack"
