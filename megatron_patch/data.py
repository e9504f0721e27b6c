"""Datasets: megatron-core ``GPTDataset`` over indexed ``.bin/.idx`` prefixes, blended by weight.

Blend weights are **sampling probabilities** (independent of the datasets' sizes), as in
Megatron-LM: ``--data-path 0.3 A 0.7 B`` draws 30% of the samples from A. Each training sample
carries its domain id (``BlendedDataset``'s ``dataset_id``: the position of its prefix in the
blend) into the loss, for per-domain statistics. Validation sets are fixed per domain
(``--valid-data-path``, one prefix per domain, or the ``--split`` validation part of each prefix;
never weighted by the training blend), so validation losses of differently weighted runs compare
fairly.
"""

import dataclasses
import os
import struct

import numpy as np
import torch
from megatron.core.datasets.blended_dataset import BlendedDataset
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig, MockGPTDataset
from megatron.core.datasets.indexed_dataset import DType

from .arguments import parse_data_path
from .distributed import print_rank0
from .domains import domain_name
from .errors import ArgumentError


# Megatron's .idx layout: magic, version (8 bytes), token dtype code (1), sequence count (8),
# document count (8), then int32 lengths, int64 byte pointers and int64 document indices.
_IDX_MAGIC = b"MMIDIDX\x00\x00"
_IDX_HEADER = struct.Struct("<9sQBQQ")


def check_prefix(prefix: str, flag: str) -> None:
    """Fail early, naming the flag, when ``prefix.idx``/``.bin`` are missing, corrupt or do not match.

    Reads the index header and its last entries only (constant time, any dataset size), and never
    through megatron-core's reader, whose errors on a bad file are a traceback plus noise.
    """
    for ext in (".idx", ".bin"):
        if prefix.endswith(ext):
            raise ArgumentError(f"{flag}: {prefix} names a file; pass the prefix without {ext} "
                                f"({prefix[: -len(ext)]})")
    for ext in (".idx", ".bin"):
        if not os.path.isfile(prefix + ext):
            raise ArgumentError(f"{flag}: {prefix}{ext} does not exist; build it with tools/preprocess_data.py")
    idx, size = prefix + ".idx", os.path.getsize(prefix + ".idx")

    def corrupt(why):
        return ArgumentError(f"{flag}: {idx} is corrupt or truncated ({why}); rebuild it with tools/preprocess_data.py")

    with open(idx, "rb") as f:
        head = f.read(_IDX_HEADER.size)
    if len(head) < _IDX_HEADER.size or head[:9] != _IDX_MAGIC:
        raise corrupt("no Megatron index header")
    _, version, code, sequences, documents = _IDX_HEADER.unpack(head)
    try:
        token_size = DType.size(DType.dtype_from_code(code))
    except ValueError:
        raise corrupt(f"unknown token type code {code}") from None
    needed = _IDX_HEADER.size + 12 * sequences + 8 * documents
    if version != 1:
        raise corrupt(f"index version {version}, not 1")
    if size < needed:
        raise corrupt(f"{size} bytes, its header needs {needed}")
    if sequences == 0:
        raise ArgumentError(f"{flag}: {prefix} holds no document; drop it or rebuild it")
    last_length = int(np.fromfile(idx, np.int32, 1, offset=_IDX_HEADER.size + 4 * (sequences - 1))[0])
    last_pointer = int(np.fromfile(idx, np.int64, 1, offset=_IDX_HEADER.size + 4 * sequences + 8 * (sequences - 1))[0])
    expected, actual = last_pointer + last_length * token_size, os.path.getsize(prefix + ".bin")
    if actual < expected:
        raise ArgumentError(f"{flag}: {prefix}.bin is truncated ({actual} bytes, its index needs {expected}); "
                            "rebuild it with tools/preprocess_data.py")
    if actual > expected:
        raise ArgumentError(f"{flag}: {prefix}.bin ({actual} bytes) does not match its .idx ({expected} bytes): "
                            "they come from different builds; rebuild both with tools/preprocess_data.py")


def check_data_args(data) -> None:
    """Check every prefix of ``--data-path`` and ``--valid-data-path`` (cheap; before any process group).

    Args:
        data: the :class:`megatron_patch.config.DataConfig`.
    """
    if data.mock_data:
        return
    for flag, tokens in (("--data-path", data.data_path), ("--valid-data-path", data.valid_data_path)):
        for prefix in parse_data_path(tokens)[0]:
            check_prefix(prefix, flag)


@dataclasses.dataclass
class DataSetup:
    train: torch.utils.data.Dataset
    valid: dict  # domain name -> dataset
    domains: list  # training domain names, by domain id
    blend: tuple  # (prefixes, weights) of the training blend, recorded in checkpoints


def _config(config, tokenizer, blend=None, blend_per_split=None, split=None) -> GPTDatasetConfig:
    return GPTDatasetConfig(
        random_seed=config.training.seed,
        sequence_length=config.model.seq_length,
        blend=blend,
        blend_per_split=blend_per_split,
        split=split,
        path_to_cache=config.data.data_cache_path,
        tokenizer=tokenizer,
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,
        mid_level_dataset_surplus=0.005,
    )


def build_datasets(config, tokenizer, is_built_on_rank=lambda: True) -> DataSetup:
    """The training blend for ``train_iters`` steps and one fixed validation set per domain.

    Validation sets come from ``--valid-data-path`` (one prefix per domain) or, without it, from
    the ``--split`` validation part of each training prefix on its own; never from the weighted
    blend, so they do not depend on the training weights. Each evaluation reads the same first
    ``eval_iters`` global batches of each set.

    Args:
        config: the :class:`megatron_patch.config.RunConfig`.
        tokenizer: the run's tokenizer (:mod:`megatron_patch.tokenizer`).
        is_built_on_rank: megatron-core's hook; every rank builds its indices here.
    """
    data, batch = config.data, config.training.global_batch_size
    train_samples = config.training.train_iters * batch
    valid_samples = max(config.logging.eval_iters * batch, 1)
    if data.mock_data:
        mock = _config(config, tokenizer, split="99,1,0")
        mock.mock = True
        train, valid, _ = BlendedMegatronDatasetBuilder(
            MockGPTDataset, [train_samples, valid_samples, 0], is_built_on_rank, mock
        ).build()
        return DataSetup(train, {"mock": valid}, ["mock"], ([], None))
    check_data_args(data)
    prefixes, weights = parse_data_path(data.data_path)
    valid_prefixes, _ = parse_data_path(data.valid_data_path)
    if valid_prefixes:
        blend = _config(config, tokenizer, blend_per_split=[(prefixes, weights), None, None])
        train = BlendedMegatronDatasetBuilder(GPTDataset, [train_samples, 0, 0], is_built_on_rank, blend).build()[0]
        valid = {}
        for prefix in valid_prefixes:
            one = _config(config, tokenizer, blend_per_split=[None, ([prefix], None), None])
            valid[domain_name(prefix)] = BlendedMegatronDatasetBuilder(
                GPTDataset, [0, valid_samples, 0], is_built_on_rank, one
            ).build()[1]
    else:
        train = _build_split_part(config, tokenizer, (prefixes, weights), 0, train_samples, is_built_on_rank)
        valid = {}
        for prefix in prefixes:
            dataset = _build_split_part(config, tokenizer, ([prefix], None), 1, valid_samples, is_built_on_rank)
            if dataset is not None:
                valid[domain_name(prefix)] = dataset
    return DataSetup(train, valid, [domain_name(p) for p in prefixes], (prefixes, weights))


def _build_split_part(config, tokenizer, blend, part: int, num_samples: int, is_built_on_rank):
    """The ``--split`` part ``part`` (0 train, 1 validation) of ``blend``, or None (validation only) if empty.

    Only that part is built: megatron-core would otherwise also build the other parts, and it
    loops forever on a part that holds no document of some prefix (small data, a 1% split).
    """
    split = config.data.split
    dataset_config = _config(config, tokenizer, blend=blend, split=split)
    if dataset_config.split_matrix[part] is None:
        if part == 0:
            raise ArgumentError(f"--split {split}: gives no training part; use e.g. 969,30,1")
        return None
    for prefix in blend[0]:
        n = GPTDataset.numel_low_level_dataset(GPTDataset.build_low_level_dataset(prefix, dataset_config))
        lo, hi = (int(round(x * n)) for x in dataset_config.split_matrix[part])
        if hi <= lo and part == 0:
            raise ArgumentError(f"--data-path {prefix}: --split {split} leaves it no training document; "
                                f"raise the training share of --split or drop the prefix")
        if hi <= lo:
            print_rank0(f"note: --split {split} leaves no validation document in {prefix}; no validation "
                        f"set for {domain_name(prefix)} (give --valid-data-path for one)")
            return None
    dataset_config.split_matrix = [m if i == part else None for i, m in enumerate(dataset_config.split_matrix)]
    sizes = [num_samples if i == part else 0 for i in range(3)]
    return BlendedMegatronDatasetBuilder(GPTDataset, sizes, is_built_on_rank, dataset_config).build()[part]


def consumed_per_dataset(dataset, consumed_samples: int, domains: list[str]) -> dict[str, int]:
    """How many of the first ``consumed_samples`` samples came from each dataset of the blend."""
    if not isinstance(dataset, BlendedDataset):
        return {domains[0]: consumed_samples} if len(domains) == 1 else {}
    counts = np.bincount(dataset.dataset_index[:consumed_samples], minlength=len(domains))
    return {name: int(n) for name, n in zip(domains, counts)}


class DataParallelBatches:
    """Index batches of one DP rank, in Megatron's order, starting after ``consumed_samples``.

    Global sample ``k`` goes to DP rank ``(k // micro_batch_size) % dp_size`` within each block
    of ``micro_batch_size * dp_size`` samples, so a reweighting group (one micro-batch over the
    DP group) is one contiguous block of the dataset. With ``wrap`` the order cycles (validation
    sets smaller than an evaluation); without it, it ends with the last full block.
    """

    def __init__(self, num_samples: int, *, consumed_samples: int, micro_batch_size: int, dp_rank: int,
                 dp_size: int, wrap: bool = False):
        self.num_samples, self.start, self.wrap = num_samples, consumed_samples, wrap
        self.micro_batch_size, self.dp_rank, self.group = micro_batch_size, dp_rank, micro_batch_size * dp_size

    def __len__(self):
        return 2**62 if self.wrap else max(self.num_samples - self.start, 0) // self.group

    def __iter__(self):
        start = self.start
        while self.wrap or start + self.group <= self.num_samples:
            first = start + self.dp_rank * self.micro_batch_size
            yield [(first + i) % self.num_samples for i in range(self.micro_batch_size)]
            start += self.group


def batch_iterator(dataset, *, consumed_samples: int, micro_batch_size: int, dp_rank: int, dp_size: int,
                   num_workers: int = 0, wrap: bool = False):
    """An iterator over this DP rank's micro-batches (dicts of ``[b, ...]`` tensors)."""
    batches = DataParallelBatches(len(dataset), consumed_samples=consumed_samples, micro_batch_size=micro_batch_size,
                                  dp_rank=dp_rank, dp_size=dp_size, wrap=wrap)
    # A private generator: a DataLoader iterator draws a seed when it starts, which must not move the
    # global RNG that dropout uses (a resumed run starts its iterator at another point of that stream).
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=num_workers, collate_fn=_collate,
                                         generator=torch.Generator())
    return iter(loader)


def _collate(samples: list[dict]) -> dict:
    out = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        out[key] = torch.as_tensor(np.stack([np.asarray(v) for v in values]))
    return out
