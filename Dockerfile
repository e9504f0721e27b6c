# The training image: NGC PyTorch (CUDA, cuDNN, NCCL, Transformer Engine, apex, torch) plus this
# project. Works as `docker run --gpus all IMAGE ...` and as a pyxis/enroot image
# (`CONTAINER_IMAGE=... sbatch scripts/slurm/llama-1.4b.sbatch`, see docs/cluster.md).
#
#   docker build -t megatron-reweighting:0.1.0 .                           # megatron-core 0.19.2
#   docker build -t megatron-reweighting:0.1.0-mcore0.16 \
#       --build-arg BASE_IMAGE=nvcr.io/nvidia/pytorch:25.11-py3 --build-arg MEGATRON_CORE=0.16.1 .
#   docker run --gpus all --ipc=host --rm megatron-reweighting:0.1.0 \
#       torchrun --nproc_per_node 8 pretrain_llama.py --model llama-1.4b --dry-run
#   enroot import -o rw.sqsh dockerd://megatron-reweighting:0.1.0     # for pyxis
#
# Two stacks, a base and the megatron-core it fits, the two tested ones of
# megatron_patch/version_guard.py; pass both build arguments together:
# - default: NGC 26.06 (Python 3.12, CUDA 13.3, torch 2.13.0a0, Transformer Engine 2.16) with
#   megatron-core 0.19.2. 0.19 needs Python >= 3.12 and torch >= 2.6 and pins no TE range; 26.06 is
#   the base of its own CI (docker/.ngc_version.dev of Megatron-LM's core_r0.19.0 branch), whose
#   lock has torch 2.13.0 (ours on CPU too) and whose two CI images build TE 2.16 and 2.17.1, so
#   the base's TE 2.16 is one 0.19 is tested with. Later NGC releases bring torch and TE that no
#   0.19 release was tested on; 26.01, which Megatron's install guide names, brings TE 2.11.
# - MEGATRON_CORE=0.16.1 with BASE_IMAGE=nvcr.io/nvidia/pytorch:25.11-py3: a torch (2.10
#   pre-release) and a TE inside 0.16.1's supported range (TE >= 2.9, < 2.12).
# Nothing is downloaded at run time: every dependency is installed here, the dataset helpers of
# megatron-core come compiled in its wheel (checked below), and the start-up version guard runs
# at build time.
ARG BASE_IMAGE=nvcr.io/nvidia/pytorch:26.06-py3
FROM ${BASE_IMAGE}
ARG MEGATRON_CORE=0.19.2

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    CUDA_DEVICE_MAX_CONNECTIONS=1 \
    HF_HUB_OFFLINE=1

WORKDIR /workspace/megatron-reweighting

# Dependencies first (a layer that survives code changes). --no-deps everywhere: the image's
# torch, numpy and Transformer Engine must stay as NGC built them (pip would otherwise try to
# replace the pre-release torch from PyPI). So every package is named with its version: the
# project's pins (requirements-cpu.txt), among them the "tokenizers" extra (GPT2BPETokenizer,
# HuggingFaceTokenizer, TikTokenizer, .jsonl.zst and .parquet inputs), then what those need that
# torch does not (as pip resolves them from requirements-cpu.txt). NGC's constraint file
# (PIP_CONSTRAINT) is off for this one command only: it would refuse any pin that differs from
# the base's copy of a package; the image keeps it for later installs.
RUN PIP_CONSTRAINT= pip install --no-deps \
        megatron-core==${MEGATRON_CORE} \
        sentencepiece==0.2.3 \
        psutil==7.2.2 \
        tokenizers==0.23.3 \
        transformers==5.23.0 \
        safetensors==0.8.0 \
        tiktoken==0.14.0 \
        zstandard==0.25.0 \
        pyarrow==26.0.1 \
        huggingface-hub==2.4.0 \
        hf-xet==1.8.0 \
        httpx2==2.16.2 \
        httpcore2==2.16.2 \
        h11==0.16.0 \
        anyio==4.16.0 \
        truststore==0.10.5 \
        click==8.5.1 \
        pyyaml==6.0.4 \
        regex==2026.11.19 \
        requests==2.34.2 \
        urllib3==2.8.0 \
        idna==3.20 \
        certifi==2026.10.19.post1 \
        charset-normalizer==3.5.3 \
        tqdm==4.70.1 \
        typer==0.29.2 \
        shellingham==1.5.4 \
        rich==15.0.0 \
        pygments==2.21.0 \
        markdown-it-py==4.3.0 \
        mdurl==0.1.2 \
        annotated-doc==0.0.7 \
        pydantic==2.14.4 \
        pydantic-core==2.50.5 \
        annotated-types==0.8.0 \
        typing-inspection==0.4.5 \
        typing-extensions==4.16.0 \
    && python -c "import megatron.core.datasets.helpers_cpp" \
    && python -c "import sentencepiece, tokenizers, tiktoken, zstandard, pyarrow.parquet; from transformers import AutoTokenizer"

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
