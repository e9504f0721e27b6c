"""Packaging: the pure reweighting core, the megatron-core patch and the entry points.

torch has a lower bound only, so the torch of a GPU container (NGC) is accepted as it is; the
exact CPU versions the README uses are pinned in requirements-cpu.txt.
"""

from setuptools import find_packages, setup

setup(
    name="megatron-reweighting",
    version="0.1.0",
    description="Online loss-based per-sample reweighting (Sow et al., ICLR 2025) on megatron-core",
    python_requires=">=3.10",
    packages=find_packages(include=["reweighting", "reweighting.*", "megatron_patch", "megatron_patch.*"]),
    py_modules=["pretrain_gpt", "pretrain_llama"],
    install_requires=[
        "torch>=2.4",
        "megatron-core==0.16.1",
        "sentencepiece>=0.2",
        "numpy",
        "psutil",  # megatron-core's dist_checkpointing (torch_dist format) needs it
    ],
    extras_require={
        "dev": ["pytest>=8", "pytest-timeout", "hypothesis>=6"],
        "plots": ["matplotlib"],
        "data": ["mwparserfromhell"],
        "tensorboard": ["tensorboard"],
    },
    entry_points={
        "console_scripts": [
            "rw-pretrain-gpt=pretrain_gpt:main",
            "rw-pretrain-llama=pretrain_llama:main",
        ]
    },
)
