#!/usr/bin/env bash
# The per-node task of the sbatch scripts (common.sh starts one per node with srun, or runs it
# directly outside Slurm): runs the torchrun command given as arguments, with
#   --node_rank = SLURM_NODEID (0 outside Slurm), and
#   preemption handling: SIGUSR1 (the sbatch script's warning, forwarded by srun to every process
#   of the step) becomes SIGTERM for the training processes only. torchrun itself ignores SIGUSR1
#   (inherited), so it neither dies nor starts its own 30 s kill timer; the training processes
#   save a checkpoint at the end of the iteration (--exit-signal-handler) and exit 0.
# A SIGTERM sent by Slurm (scancel, preemption, time limit) reaches every process of the step
# directly; this script then keeps waiting so that the task does not end before torchrun.
set -uo pipefail

[[ $# -gt 0 ]] || { echo "usage: launch_node.sh PYTHON -m torch.distributed.run [torchrun args] ENTRY [args]" >&2; exit 2; }

# Insert --node_rank right after "-m torch.distributed.run" (before the entry point).
args=("$@")
cmd=()
inserted=0
for ((i = 0; i < ${#args[@]}; i++)); do
    cmd+=("${args[i]}")
    if ((!inserted)) && [[ ${args[i]} == torch.distributed.run && $i -gt 0 && ${args[i - 1]} == -m ]]; then
        cmd+=(--node_rank="${SLURM_NODEID:-0}")
        inserted=1
    fi
done

echo "[launch_node $(hostname)] node_rank=${SLURM_NODEID:-0} master=${MASTER_ADDR:-?}:${MASTER_PORT:-?}" >&2

# The subshell makes SIGUSR1 ignored before exec: torchrun and the training processes inherit it.
(
    trap '' USR1
    exec "${cmd[@]}"
) &
child=$!

# shellcheck disable=SC2317  # called from the trap
stop_workers() {
    echo "[launch_node $(hostname)] $1: SIGTERM to the training processes (children of $child)" >&2
    pkill -TERM -P "$child" 2>/dev/null || true
}
trap 'stop_workers USR1' USR1
trap 'echo "[launch_node $(hostname)] TERM: waiting for torchrun to stop" >&2' TERM

while kill -0 "$child" 2>/dev/null; do wait "$child" || true; done
rc=0
wait "$child" || rc=$?
exit "$rc"
