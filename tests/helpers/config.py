"""Resolved run configurations for tests, built the way the entry points build them."""

from megatron_patch.arguments import resolve_config

TINY_FLAGS = ["--model", "tiny", "--seq-length", "16", "--max-position-embeddings", "16", "--vocab-size", "64",
              "--train-iters", "4", "--mock-data", "--tokenizer-type", "NullTokenizer"]


def config_of(argv, *, family: str = "llama", world_size: int = 1):
    """The frozen :class:`megatron_patch.config.RunConfig` of ``argv`` (no tokenizer file read)."""
    return resolve_config(list(argv), family=family, world_size=world_size, with_tokenizer=False)[0]


def tiny_config(*extra: str, world_size: int = 1, family: str = "llama"):
    """A 16-token, 64-word tiny Llama on mock data, plus ``extra`` flags."""
    return config_of([*TINY_FLAGS, *extra], family=family, world_size=world_size)
