"""Pretrain a Llama-family model (RMSNorm, SwiGLU, RoPE, no biases, untied embeddings).

    torchrun --nproc_per_node 2 pretrain_llama.py --model tiny --mock-data --train-iters 20 \\
        --reweight-strategy linupper --reweight-r 1.0

The model provider, datasets provider and forward step are pretrain_gpt.py's (megatron-core's
GPTModel builds both families); only the defaults of the layout differ (megatron_patch/presets.py).
"""

import pretrain_gpt

FAMILY = "llama"


def main(argv=None):
    pretrain_gpt.main(argv, family=FAMILY)


if __name__ == "__main__":
    main()
