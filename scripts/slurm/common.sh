# shellcheck shell=bash
# Shared logic of the sbatch scripts in this directory; sourced, never run.
#
# A model script sets its defaults with `: "${VAR:=value}"` (so the environment wins), sources
# this file and calls `rw_main "$@"`. Everything below is overridable by environment variables;
# the arguments given to the sbatch script are appended to the training command, so they
# override any flag set here (argparse keeps the last value). docs/cluster.md lists every
# variable.
#
# Launch model: `srun` starts ONE task per node, and that task runs `torchrun`, which starts
# GPUS_PER_NODE training processes on its node (static rendezvous: node rank = SLURM_NODEID,
# store on the first host of `scontrol show hostnames`). Why one task per node rather than one
# per GPU: a container (pyxis/enroot, apptainer) is started once per node instead of eight times,
# the same command runs with or without Slurm and on a CPU-only machine (torchrun with gloo), no
# Slurm MPI/PMI plugin or per-GPU binding flags are needed, and torchrun sets RANK/LOCAL_RANK/
# WORLD_SIZE the way the entry points expect. launch_node.sh is that per-node task.

# ---------------------------------------------------------------------------------------------
# This checkout: the model scripts source this file from its real place (under sbatch they find
# it through `scontrol show job`, since sbatch runs a copy of the script from its spool).
rw_find_repo_dir() { (cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd); }

rw_log() { printf '[rw-launch %s] %s\n' "$(date '+%F %T')" "$*" >&2; }
rw_die() { rw_log "error: $*"; exit 2; }

# ---------------------------------------------------------------------------------------------
# The paper's hyperparameters per model family (Sow et al. 2025; see docs/cluster.md for the
# sources and for which values are ours). Called by the model scripts before rw_main.
rw_llama_defaults() {
    : "${ENTRY:=pretrain_llama.py}"
    : "${SEQ_LENGTH:=4096}"
    : "${GLOBAL_BATCH_SIZE:=128}"        # sequences: 524,288 tokens a step
    : "${PRECISION:=bf16}"
    : "${LR:=3e-4}"
    : "${MIN_LR:=3e-5}"                   # cosine to 0.1 x peak at TRAIN_ITERS
    : "${LR_DECAY_STYLE:=cosine}"
    : "${LR_WARMUP_ITERS:=}"              # empty: min(2000, TRAIN_ITERS/20)
    : "${WEIGHT_DECAY:=0.1}"
    : "${CLIP_GRAD:=1.0}"
    : "${ADAM_BETA1:=0.9}"
    : "${ADAM_BETA2:=0.95}"
    : "${SEED:=2023}"
    : "${REWEIGHT_R:=1.0}"                # ours: the paper's r for these runs is unknown
    : "${REWEIGHT_WARMUP_ITERS:=2000}"    # ours (as the authors' FSDP code: 2,000 steps)
    : "${REWEIGHT_WARMUP_MODE:=uniform}"
    : "${SAVE_INTERVAL:=1000}"
    : "${EVAL_INTERVAL:=1000}"
    : "${EVAL_ITERS:=20}"
}

rw_gpt2_defaults() {
    : "${ENTRY:=pretrain_gpt.py}"
    : "${SEQ_LENGTH:=512}"
    : "${PRECISION:=fp32}"                # as the authors' GPT-2 code; PRECISION=bf16 for speed
    : "${LR:=5e-4}"
    : "${MIN_LR:=1e-4}"
    : "${LR_DECAY_STYLE:=cosine}"
    : "${LR_WARMUP_ITERS:=500}"           # linear
    : "${TRAIN_ITERS:=20000}"
    : "${WEIGHT_DECAY:=0.01}"             # megatron-core leaves biases and norms out of weight decay
    : "${CLIP_GRAD:=1.0}"
    : "${ADAM_BETA1:=0.9}"
    : "${ADAM_BETA2:=0.999}"
    : "${ADAM_EPS:=1e-8}"
    : "${SEED:=42}"
    : "${REWEIGHT_R:=0.4}"                # the authors' released LinUpper configs
    : "${REWEIGHT_WARMUP_ITERS:=1000}"    # the authors' burn-out steps
    : "${REWEIGHT_WARMUP_MODE:=uniform}"
    : "${SAVE_INTERVAL:=2000}"
    : "${EVAL_INTERVAL:=1000}"
    : "${EVAL_ITERS:=50}"
}

# ---------------------------------------------------------------------------------------------
# Defaults shared by all model scripts (a model script has already set its own).
rw_defaults() {
    : "${REPO_DIR:=$(rw_find_repo_dir)}"
    : "${CODE_DIR:=$REPO_DIR}"              # where pretrain_*.py are, as the training processes see it
    : "${ENTRY:=pretrain_llama.py}"
    : "${PYTHON:=python}"                   # the interpreter on the nodes (inside the container if any)

    # Shape and optimisation (model scripts set the paper's values).
    : "${MODEL:?MODEL must name a --model preset}"
    : "${SEQ_LENGTH:=4096}"
    : "${GLOBAL_BATCH_SIZE:=128}"
    : "${MICRO_BATCH_SIZE:=2}"
    : "${TP:=1}"
    : "${PP:=1}"
    : "${SEQUENCE_PARALLEL:=0}"             # 1: --sequence-parallel (TP > 1, needs Transformer Engine)
    : "${DISTRIBUTED_OPTIMIZER:=1}"
    : "${OVERLAP_COMM:=1}"                  # 1: --overlap-grad-reduce (+ --overlap-param-gather with the distributed optimizer)
    : "${PRECISION:=bf16}"                  # bf16 | fp16 | fp32
    : "${LR:=3e-4}"
    : "${MIN_LR:=3e-5}"
    : "${LR_DECAY_STYLE:=cosine}"
    : "${TRAIN_ITERS:=1000}"
    : "${LR_WARMUP_ITERS:=}"                # empty: min(2000, TRAIN_ITERS/20) as in the paper's Llama runs
    : "${WEIGHT_DECAY:=0.1}"
    : "${CLIP_GRAD:=1.0}"
    : "${ADAM_BETA1:=0.9}"
    : "${ADAM_BETA2:=0.95}"
    : "${ADAM_EPS:=}"                       # empty: the entry point's default
    : "${SEED:=2023}"

    : "${TRAINER:=megatron-core}"           # megatron-core (our loop) | megatron-lm (Megatron-LM's pretrain, megatron-core >= 0.17)

    # Reweighting (Sow et al.): STRATEGY=uniform is the plain baseline.
    : "${STRATEGY:=uniform}"                # uniform | linupper | quadratic | extremes
    : "${REWEIGHT_R:=1.0}"
    : "${REWEIGHT_DELTA:=1.0}"
    : "${REWEIGHT_WARMUP_ITERS:=2000}"
    : "${REWEIGHT_WARMUP_MODE:=uniform}"    # uniform | large-r
    : "${REWEIGHT_WARMUP_R:=}"              # only with REWEIGHT_WARMUP_MODE=large-r
    : "${REWEIGHT_GROUP:=micro-batch}"      # micro-batch (micro batch x DP) | global-batch (the whole step)

    # Data: a Megatron blend ("w1 prefix1 w2 prefix2 ..." or a single prefix), or mock data.
    : "${MOCK_DATA:=0}"
    : "${DATA_PATH:=}"
    : "${SPLIT:=}"                          # e.g. 990,8,2; empty: the entry point's default
    : "${VALID_DATA_PATH:=}"                # validation prefixes, one per domain; empty: SPLIT's part of DATA_PATH
    : "${DOMAIN_WEIGHTS:=}"                 # uniform | doge | doremi: DATA_PATH holds prefixes only, one per domain
    : "${TOKENIZER_TYPE:=}"                 # empty: the entry point's default (SentencePieceTokenizer)
    : "${TOKENIZER_MODEL:=}"                # .model, tokenizer.json (or its directory), tiktoken JSON
    : "${VOCAB_FILE:=}"                     # GPT2BPETokenizer: vocab.json
    : "${MERGE_FILE:=}"                     # GPT2BPETokenizer: merges.txt

    # Run directories.
    : "${RUN_NAME:=${MODEL}-${STRATEGY}}"
    : "${OUTPUT_DIR:=${SLURM_SUBMIT_DIR:-$PWD}/runs/$RUN_NAME}"
    : "${CHECKPOINT_DIR:=$OUTPUT_DIR/checkpoints}"   # --save and --load: a resubmit resumes
    : "${LOAD_DIR:=$CHECKPOINT_DIR}"
    : "${LOG_DIR:=$OUTPUT_DIR/logs}"
    : "${TENSORBOARD_DIR=$OUTPUT_DIR/tensorboard}"   # set but empty: no --tensorboard-dir
    : "${METRICS_FILE:=}"                           # empty: no --metrics-file
    : "${SAVE_INTERVAL:=1000}"
    : "${EVAL_INTERVAL:=1000}"
    : "${EVAL_ITERS:=20}"
    : "${LOG_INTERVAL:=10}"
    : "${EXIT_DURATION_MINS:=}"             # empty: not passed (the signal below does the job)

    # Launch.
    : "${NNODES:=${SLURM_JOB_NUM_NODES:-1}}"
    : "${GPUS_PER_NODE:=8}"                 # torchrun processes per node (CPU runs: any number)
    : "${MASTER_ADDR:=}"                    # empty: first host of the allocation
    : "${MASTER_PORT:=$((20000 + ${SLURM_JOB_ID:-0} % 20000))}"
    : "${TORCHRUN_ARGS:=}"                  # extra torchrun flags, word-split
    : "${SRUN_ARGS:=}"                      # extra srun flags, word-split
    : "${EXTRA_ARGS:=}"                     # extra training flags, word-split, before "$@"
    : "${AUTO_REQUEUE:=1}"                  # requeue after a checkpoint-on-signal exit
    : "${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:=600}"  # torchrun's grace period for workers on SIGTERM
    : "${DRY_RUN:=0}"                       # 1: run the entry point with --dry-run here and exit
    : "${PRINT_ONLY:=0}"                    # 1: print the launch command and exit

    # Containers, off by default.
    : "${CONTAINER_IMAGE:=}"                # pyxis: image or .sqsh; apptainer: .sif
    : "${CONTAINER_RUNTIME:=}"              # pyxis | apptainer; empty: apptainer for *.sif, else pyxis
    : "${CONTAINER_MOUNTS:=}"               # comma-separated src:dst; the run directories and REPO_DIR are added
    : "${CONTAINER_WORKDIR:=$CODE_DIR}"
    export TORCH_ELASTIC_SHUTDOWN_TIMEOUT
    export CUDA_DEVICE_MAX_CONNECTIONS="${CUDA_DEVICE_MAX_CONNECTIONS:-1}"  # TP comm/compute overlap
}

# ---------------------------------------------------------------------------------------------
# The training command's flags, in RW_TRAIN_ARGS.
rw_build_train_args() {
    # `sbatch script --train-iters N` overrides TRAIN_ITERS, and the derived warm-up follows it.
    local iters=$TRAIN_ITERS prev="" a
    for a in "$@"; do
        [[ $prev == --train-iters ]] && iters=$a
        [[ $a == --train-iters=* ]] && iters=${a#--train-iters=}
        prev=$a
    done
    [[ $iters =~ ^[0-9]+$ ]] || rw_die "--train-iters/TRAIN_ITERS must be a number, not '$iters'"
    local warmup=$LR_WARMUP_ITERS
    if [[ -z $warmup ]]; then
        warmup=$((iters / 20))
        ((warmup > 2000)) && warmup=2000
    fi
    RW_TRAIN_ARGS=(
        --model "$MODEL"
        --seq-length "$SEQ_LENGTH"
        --micro-batch-size "$MICRO_BATCH_SIZE"
        --global-batch-size "$GLOBAL_BATCH_SIZE"
        --tensor-model-parallel-size "$TP"
        --pipeline-model-parallel-size "$PP"
        --lr "$LR" --min-lr "$MIN_LR" --lr-decay-style "$LR_DECAY_STYLE"
        --lr-warmup-iters "$warmup"
        --train-iters "$TRAIN_ITERS"
        --weight-decay "$WEIGHT_DECAY" --clip-grad "$CLIP_GRAD"
        --adam-beta1 "$ADAM_BETA1" --adam-beta2 "$ADAM_BETA2"
        --seed "$SEED"
        --reweight-strategy "$STRATEGY"
        --log-interval "$LOG_INTERVAL"
        --eval-interval "$EVAL_INTERVAL" --eval-iters "$EVAL_ITERS"
        --save "$CHECKPOINT_DIR" --load "$LOAD_DIR" --save-interval "$SAVE_INTERVAL"
        --exit-signal-handler
    )
    [[ -n $ADAM_EPS ]] && RW_TRAIN_ARGS+=(--adam-eps "$ADAM_EPS")
    [[ $TRAINER != megatron-core ]] && RW_TRAIN_ARGS+=(--trainer "$TRAINER")
    if [[ $STRATEGY != uniform ]]; then
        RW_TRAIN_ARGS+=(--reweight-r "$REWEIGHT_R" --reweight-delta "$REWEIGHT_DELTA"
            --reweight-warmup-iters "$REWEIGHT_WARMUP_ITERS" --reweight-warmup-mode "$REWEIGHT_WARMUP_MODE"
            --reweight-group "$REWEIGHT_GROUP")
        [[ -n $REWEIGHT_WARMUP_R ]] && RW_TRAIN_ARGS+=(--reweight-warmup-r "$REWEIGHT_WARMUP_R")
    fi
    case $PRECISION in
        bf16) RW_TRAIN_ARGS+=(--bf16) ;;
        fp16) RW_TRAIN_ARGS+=(--fp16) ;;
        fp32) ;;
        *) rw_die "PRECISION must be bf16, fp16 or fp32, not '$PRECISION'" ;;
    esac
    [[ $DISTRIBUTED_OPTIMIZER == 1 ]] && RW_TRAIN_ARGS+=(--use-distributed-optimizer)
    if [[ $OVERLAP_COMM == 1 ]]; then
        RW_TRAIN_ARGS+=(--overlap-grad-reduce)
        [[ $DISTRIBUTED_OPTIMIZER == 1 ]] && RW_TRAIN_ARGS+=(--overlap-param-gather)
    fi
    [[ $SEQUENCE_PARALLEL == 1 ]] && RW_TRAIN_ARGS+=(--sequence-parallel)
    if [[ $MOCK_DATA == 1 ]]; then
        RW_TRAIN_ARGS+=(--mock-data)
    elif [[ -n $DATA_PATH ]]; then
        local -a blend
        read -r -a blend <<<"$DATA_PATH"
        RW_TRAIN_ARGS+=(--data-path "${blend[@]}")
    elif [[ $DRY_RUN != 1 && $PRINT_ONLY != 1 ]]; then
        rw_die "set DATA_PATH (a Megatron blend or prefix) or MOCK_DATA=1"
    fi
    [[ -n $SPLIT ]] && RW_TRAIN_ARGS+=(--split "$SPLIT")
    if [[ -n $VALID_DATA_PATH ]]; then
        local -a valid
        read -r -a valid <<<"$VALID_DATA_PATH"
        RW_TRAIN_ARGS+=(--valid-data-path "${valid[@]}")
    fi
    [[ -n $DOMAIN_WEIGHTS ]] && RW_TRAIN_ARGS+=(--domain-weights "$DOMAIN_WEIGHTS")
    [[ -n $TOKENIZER_TYPE ]] && RW_TRAIN_ARGS+=(--tokenizer-type "$TOKENIZER_TYPE")
    [[ -n $TOKENIZER_MODEL ]] && RW_TRAIN_ARGS+=(--tokenizer-model "$TOKENIZER_MODEL")
    [[ -n $VOCAB_FILE ]] && RW_TRAIN_ARGS+=(--vocab-file "$VOCAB_FILE")
    [[ -n $MERGE_FILE ]] && RW_TRAIN_ARGS+=(--merge-file "$MERGE_FILE")
    [[ -n $TENSORBOARD_DIR ]] && RW_TRAIN_ARGS+=(--tensorboard-dir "$TENSORBOARD_DIR")
    [[ -n $METRICS_FILE ]] && RW_TRAIN_ARGS+=(--metrics-file "$METRICS_FILE")
    [[ -n $EXIT_DURATION_MINS ]] && RW_TRAIN_ARGS+=(--exit-duration-in-mins "$EXIT_DURATION_MINS")
    if [[ -n $EXTRA_ARGS ]]; then
        local -a extra
        read -r -a extra <<<"$EXTRA_ARGS"
        RW_TRAIN_ARGS+=("${extra[@]}")
    fi
    return 0
}

# ---------------------------------------------------------------------------------------------
# Container wrapping of the per-node command, in RW_CONTAINER_SRUN_ARGS (pyxis flags for srun)
# and RW_CONTAINER_PREFIX (apptainer exec ... put in front of the command).
rw_container_args() {
    RW_CONTAINER_SRUN_ARGS=()
    RW_CONTAINER_PREFIX=()
    [[ -z $CONTAINER_IMAGE ]] && return 0
    local runtime=$CONTAINER_RUNTIME
    if [[ -z $runtime ]]; then
        if [[ $CONTAINER_IMAGE == *.sif ]]; then runtime=apptainer; else runtime=pyxis; fi
    fi
    # The checkout (launch_node.sh, and the code unless CODE_DIR points into the image) and the
    # run directories are mounted at the same paths, so every path in the command stays valid.
    local mounts=$REPO_DIR:$REPO_DIR d
    for d in "$OUTPUT_DIR" "$CHECKPOINT_DIR" "$LOG_DIR" ${TENSORBOARD_DIR:+"$TENSORBOARD_DIR"}; do
        [[ $d == "$REPO_DIR"/* || ,$mounts, == *,$d:$d,* ]] || mounts+=",$d:$d"
    done
    [[ -n $CONTAINER_MOUNTS ]] && mounts+=",$CONTAINER_MOUNTS"
    case $runtime in
        pyxis)
            RW_CONTAINER_SRUN_ARGS=(--container-image="$CONTAINER_IMAGE" --container-mounts="$mounts"
                --container-workdir="$CONTAINER_WORKDIR" --no-container-mount-home)
            ;;
        apptainer | singularity)
            local exe=apptainer
            command -v apptainer >/dev/null 2>&1 || exe=singularity
            RW_CONTAINER_PREFIX=("$exe" exec --nv --bind "$mounts" --pwd "$CONTAINER_WORKDIR" "$CONTAINER_IMAGE")
            ;;
        *) rw_die "CONTAINER_RUNTIME must be pyxis or apptainer, not '$runtime'" ;;
    esac
}

# ---------------------------------------------------------------------------------------------
# DRY_RUN=1: the exact configuration through the entry point's --dry-run, on this machine, with
# no Slurm and no GPU. WORLD_SIZE tells it how many processes the real job would have.
rw_dry_run() {
    local world=$((NNODES * GPUS_PER_NODE))
    rw_log "dry run of $ENTRY: $NNODES node(s) x $GPUS_PER_NODE GPUs = world size $world"
    (cd "$CODE_DIR" && WORLD_SIZE=$world RANK=0 LOCAL_RANK=0 exec "$PYTHON" "$CODE_DIR/$ENTRY" \
        "${RW_TRAIN_ARGS[@]}" "$@" --dry-run)
}

rw_print_cmd() { printf '%q ' "$@"; printf '\n'; }

# ---------------------------------------------------------------------------------------------
rw_main() {
    rw_defaults
    rw_build_train_args "$@"
    if [[ $DRY_RUN == 1 ]]; then
        rw_dry_run "$@"
        return
    fi

    local -a torchrun extra_srun extra_torchrun
    read -r -a extra_torchrun <<<"$TORCHRUN_ARGS"
    read -r -a extra_srun <<<"$SRUN_ARGS"
    if [[ -z $MASTER_ADDR ]]; then
        if [[ -n ${SLURM_JOB_NODELIST:-} ]]; then
            MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
        else
            MASTER_ADDR=127.0.0.1
        fi
    fi
    export MASTER_ADDR MASTER_PORT
    torchrun=("$PYTHON" -m torch.distributed.run
        --nnodes="$NNODES" --nproc_per_node="$GPUS_PER_NODE"
        --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT"
        --max_restarts=0 "${extra_torchrun[@]}"
        "$CODE_DIR/$ENTRY" "${RW_TRAIN_ARGS[@]}" "$@")
    rw_container_args
    # launch_node.sh reads the node rank from SLURM_NODEID inside the task.
    local -a node_cmd=("${RW_CONTAINER_PREFIX[@]}" bash "$REPO_DIR/scripts/slurm/launch_node.sh" "${torchrun[@]}")

    local -a launch
    if [[ -n ${SLURM_JOB_ID:-} ]]; then
        # Explicit task geometry: the step must not inherit --ntasks-per-node/--gpus-per-task
        # from the allocation (with pyxis a missing geometry starts one process only).
        launch=(srun --nodes="$NNODES" --ntasks="$NNODES" --ntasks-per-node=1
            --cpus-per-task="${SLURM_CPUS_ON_NODE:-1}" --kill-on-bad-exit=1 --export=ALL
            "${RW_CONTAINER_SRUN_ARGS[@]}" "${extra_srun[@]}" "${node_cmd[@]}")
    else
        ((NNODES == 1 || PRINT_ONLY == 1)) || rw_die "NNODES=$NNODES needs Slurm (run through sbatch)"
        [[ -z $CONTAINER_IMAGE || ${#RW_CONTAINER_PREFIX[@]} -gt 0 ]] \
            || rw_die "a pyxis CONTAINER_IMAGE needs Slurm (srun); use an apptainer .sif outside Slurm"
        launch=("${node_cmd[@]}")
    fi

    if [[ $PRINT_ONLY == 1 ]]; then
        rw_print_cmd "${launch[@]}"
        return 0
    fi

    mkdir -p "$OUTPUT_DIR" "$CHECKPOINT_DIR" "$LOG_DIR" ${TENSORBOARD_DIR:+"$TENSORBOARD_DIR"}
    local record
    record=$LOG_DIR/launch-${SLURM_JOB_ID:-local}-$(date +%Y%m%dT%H%M%S).txt
    {
        echo "job=${SLURM_JOB_ID:-local} restarts=${SLURM_RESTART_COUNT:-0} nodes=${SLURM_JOB_NODELIST:-$(hostname)}"
        echo "git=$(git -C "$REPO_DIR" rev-parse HEAD 2>/dev/null || echo unknown)"
        rw_print_cmd "${launch[@]}"
    } >"$record"
    rw_log "model=$MODEL strategy=$STRATEGY nodes=$NNODES x $GPUS_PER_NODE TP=$TP PP=$PP" \
        "micro=$MICRO_BATCH_SIZE global=$GLOBAL_BATCH_SIZE iters=$TRAIN_ITERS restart=${SLURM_RESTART_COUNT:-0}"
    rw_log "checkpoints: $CHECKPOINT_DIR (resumes from $LOAD_DIR if it holds one); command in $record"

    # Preemption: `#SBATCH --signal=B:USR1@...` warns this shell before the time limit. The
    # warning is passed to srun, which forwards it to every process of the step; launch_node.sh
    # turns it into SIGTERM for the training processes only (torchrun ignores it), they save a
    # checkpoint at the end of the iteration (--exit-signal-handler) and exit 0. The job is then
    # requeued (AUTO_REQUEUE=1) and resumes from that checkpoint through --load.
    RW_STOP_REQUESTED=0
    local child rc
    trap 'RW_STOP_REQUESTED=1; rw_log "USR1: asking training to checkpoint and exit"; kill -USR1 "$child" 2>/dev/null || true' USR1
    # scancel/preemption also signals the step directly; keep waiting so the step can finish.
    trap 'RW_STOP_REQUESTED=1; rw_log "TERM received; the step is being signalled by Slurm"' TERM
    "${launch[@]}" &
    child=$!
    # `wait` also returns when a trapped signal arrives: wait again until the step has ended.
    while kill -0 "$child" 2>/dev/null; do wait "$child" || true; done
    rc=0
    wait "$child" || rc=$?
    trap - USR1 TERM
    rw_log "training step exited with status $rc"
    if [[ $RW_STOP_REQUESTED == 1 && $rc == 0 && $AUTO_REQUEUE == 1 && -n ${SLURM_JOB_ID:-} ]]; then
        rw_log "requeueing job $SLURM_JOB_ID to resume from the checkpoint"
        scontrol requeue "$SLURM_JOB_ID" || rw_log "scontrol requeue failed: resubmit to resume"
    fi
    return "$rc"
}
