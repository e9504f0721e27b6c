# The training image: NGC PyTorch (CUDA, cuDNN, NCCL, Transformer Engine, apex, torch) plus this
# project. Works as `docker run --gpus all IMAGE ...` and as a pyxis/enroot image
# (`CONTAINER_IMAGE=... sbatch scripts/slurm/llama-1.4b.sbatch`, see docs/cluster.md).
#
#   docker build -t megatron-reweighting:0.1.0 .
#   docker run --gpus all --ipc=host --rm megatron-reweighting:0.1.0 \
#       torchrun --nproc_per_node 8 pretrain_llama.py --model llama-1.4b --dry-run
#   enroot import -o rw.sqsh dockerd://megatron-reweighting:0.1.0     # for pyxis
#
# The base is pinned by tag: NGC 25.11 ships a torch (2.10 pre-release) and a Transformer Engine
# inside megatron-core 0.16.1's supported range (TE >= 2.9, < 2.12). Change both together.
# Nothing is downloaded at run time: every dependency is installed here, the dataset helpers of
# megatron-core come compiled in its wheel (checked below), and the start-up version guard runs
# at build time.
ARG BASE_IMAGE=nvcr.io/nvidia/pytorch:25.11-py3
FROM ${BASE_IMAGE}

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    CUDA_DEVICE_MAX_CONNECTIONS=1 \
    HF_HUB_OFFLINE=1

WORKDIR /workspace/megatron-reweighting

# Dependencies first (a layer that survives code changes). --no-deps everywhere: the image's
# torch, numpy and Transformer Engine must stay as NGC built them (pip would otherwise try to
# replace the pre-release torch from PyPI).
RUN pip install --no-deps \
        megatron-core==0.16.1 \
        sentencepiece==0.2.3 \
        psutil==7.2.2 \
    && python -c "import megatron.core.datasets.helpers_cpp"

# The project itself (see .dockerignore for what stays out).
COPY setup.py ./
COPY reweighting/ reweighting/
COPY megatron_patch/ megatron_patch/
COPY tools/ tools/
COPY scripts/ scripts/
COPY docs/ docs/
COPY pretrain_gpt.py pretrain_llama.py ./
RUN pip install --no-deps --no-build-isolation . \
    && python -c "from megatron_patch.version_guard import check_megatron_core; check_megatron_core()" \
    && python pretrain_llama.py --help > /dev/null

# torchrun and the sbatch scripts run the entry points from here; an image is a launcher, so no
# ENTRYPOINT overrides what srun/pyxis or `docker run IMAGE cmd` execute.
CMD ["python", "pretrain_llama.py", "--help"]
