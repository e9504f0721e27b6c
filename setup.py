"""Packaging: the pure reweighting core, the megatron-core patch, the entry points and the tools.

The tools are installed too (``tools``, ``tools.*``: the data tools, benchmarks, demo and toy
experiment), with the committed corpus fixtures as package data; the data tools get console
scripts (``rw-preprocess-data`` ...), named like the ``tools/*.py`` files Megatron-LM users know.

torch has a lower bound only, so the torch of a GPU container (NGC) is accepted as it is; the
exact CPU versions the README uses are pinned in requirements-cpu.txt. megatron-core has one
tested release per Python (megatron_patch/version_guard.py's SUPPORTED_VERSIONS): 0.16.1 on
Python 3.10-3.11, 0.19 on Python >= 3.12 (the Requires-Python of its wheels).
"""

from setuptools import find_packages, setup

setup(
    name="megatron-reweighting",
    version="0.1.0",
    description="Online loss-based per-sample reweighting (Sow et al., ICLR 2025) on megatron-core",
    python_requires=">=3.10",
    packages=find_packages(include=["reweighting", "reweighting.*", "megatron_patch", "megatron_patch.*",
                                    "tools", "tools.*"]),
    package_data={"tools.data.fixtures": ["*.jsonl", "NOTICE"]},
    py_modules=["pretrain_gpt", "pretrain_llama"],
    install_requires=[
        "torch>=2.4",
        'megatron-core==0.16.1; python_version < "3.12"',
        'megatron-core>=0.19,<0.20; python_version >= "3.12"',
        "sentencepiece>=0.2",
        "numpy",
        "psutil",  # megatron-core's dist_checkpointing (torch_dist format) needs it
    ],
    extras_require={
        "dev": ["pytest>=8", "pytest-timeout", "hypothesis>=6"],
        "plots": ["matplotlib"],
        "data": ["mwparserfromhell"],
        # --tokenizer-type GPT2BPETokenizer / HuggingFaceTokenizer / TikTokenizer, .jsonl.zst and .parquet inputs
        "tokenizers": ["tokenizers>=0.20", "transformers>=4.45", "tiktoken>=0.7", "zstandard>=0.22", "pyarrow>=15"],
        # tools/convert_checkpoint.py, tools/evaluate.py (transformers 5's tokenizer and config API)
        "eval": ["transformers>=5.0", "safetensors>=0.4", "lm-eval>=0.4.13,<0.5", "datasets>=4",
                 "accelerate>=1.0"],  # lm-eval's hf model imports it
        "tensorboard": ["tensorboard"],
    },
    entry_points={
        "console_scripts": [
            "rw-pretrain-gpt=pretrain_gpt:main",
            "rw-pretrain-llama=pretrain_llama:main",
            "rw-preprocess-data=tools.preprocess_data:main",
            "rw-train-tokenizer=tools.train_tokenizer:main",
            "rw-build-corpus=tools.build_corpus:main",
            "rw-prepare-data=tools.prepare_data:main",
            "rw-prepare-slimpajama=tools.prepare_slimpajama:main",
        ]
    },
)
