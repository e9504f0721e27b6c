"""Datasets: megatron-core ``GPTDataset`` over indexed ``.bin/.idx`` prefixes, blended by weight.

Blend weights are **sampling probabilities** (independent of the datasets' sizes), as in
Megatron-LM: ``--data-path 0.3 A 0.7 B`` draws 30% of the samples from A. Each training sample
carries its domain id (``BlendedDataset``'s ``dataset_id``: the position of its prefix in the
blend) into the loss, for per-domain statistics. Validation sets are fixed per domain
(``--valid-data-path``, one prefix per domain, never weighted by the training blend), so
validation losses of differently weighted runs compare fairly.
"""

import dataclasses
import os
import re

import numpy as np
import torch
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig, MockGPTDataset

from .arguments import ArgumentError, parse_data_path


class SentencePieceTokenizer:
    """The few tokenizer fields megatron-core's datasets read: ``vocab_size``, ``eod``, ``pad``."""

    def __init__(self, model_path: str):
        import sentencepiece

        if not os.path.isfile(model_path):
            raise ArgumentError(f"--tokenizer-model {model_path}: no such file")
        self.processor = sentencepiece.SentencePieceProcessor(model_file=model_path)
        self.vocab_size = self.processor.vocab_size()
        self.eod = self.processor.eos_id()
        self.pad = self.processor.pad_id()
        # Part of the datasets' cache key (megatron-core hashes it into the index file names).
        self.unique_identifiers = {"class": type(self).__name__, "model": os.path.abspath(model_path)}


class NullTokenizer:
    """For ``--mock-data``/``NullTokenizer``: ids are already tokens; eod is the last id."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size
        self.eod = vocab_size - 1
        self.pad = -1
        self.unique_identifiers = {"class": type(self).__name__, "vocab_size": vocab_size}


def build_tokenizer(args):
    if args.tokenizer_model is not None and args.tokenizer_type == "SentencePieceTokenizer":
        return SentencePieceTokenizer(args.tokenizer_model)
    if args.vocab_size is None:
        raise ArgumentError("--vocab-size is not set; pass it, or --tokenizer-model")
    return NullTokenizer(args.vocab_size)


def domain_name(prefix: str) -> str:
    """A short display name for a dataset prefix: ``data/wiki_train_text_document`` -> ``wiki``."""
    name = os.path.basename(prefix)
    name = re.sub(r"_text_document$", "", name)
    return re.sub(r"_(train|valid|validation|test)$", "", name)


def check_prefixes(prefixes: list[str], flag: str) -> None:
    """Fail early, naming the flag, when a prefix lacks its ``.bin``/``.idx`` or they disagree."""
    for prefix in prefixes:
        for ext in (".idx", ".bin"):
            if not os.path.isfile(prefix + ext):
                raise ArgumentError(f"{flag}: {prefix}{ext} does not exist; build it with tools/preprocess_data.py")
        try:
            from megatron.core.datasets.indexed_dataset import IndexedDataset

            dataset = IndexedDataset(prefix)
            expected = int(dataset.sequence_lengths.sum()) * dataset.index.dtype_size
            actual = os.path.getsize(prefix + ".bin")
        except Exception as err:  # noqa: BLE001 - any read failure is a corrupt index to the user
            raise ArgumentError(f"{flag}: {prefix}.idx is corrupt or truncated ({err}); rebuild it") from None
        if actual < expected:
            raise ArgumentError(
                f"{flag}: {prefix}.bin is truncated ({actual} bytes, its index needs {expected}); rebuild it"
            )


@dataclasses.dataclass
class DataSetup:
    train: torch.utils.data.Dataset
    valid: dict  # domain name -> dataset
    domains: list  # training domain names, by domain id
    blend: tuple  # (prefixes, weights) of the training blend, recorded in checkpoints


def _config(args, tokenizer, blend=None, blend_per_split=None, split=None) -> GPTDatasetConfig:
    return GPTDatasetConfig(
        random_seed=args.seed,
        sequence_length=args.seq_length,
        blend=blend,
        blend_per_split=blend_per_split,
        split=split,
        path_to_cache=args.data_cache_path,
        tokenizer=tokenizer,
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,
        mid_level_dataset_surplus=0.005,
    )


def build_datasets(args, tokenizer, is_built_on_rank) -> DataSetup:
    """Train and per-domain validation datasets for ``train_iters`` steps and the eval schedule."""
    train_samples = args.train_iters * args.global_batch_size
    eval_runs = args.train_iters // args.eval_interval + 1
    valid_samples = max(eval_runs * args.eval_iters * args.global_batch_size, 1)
    if args.mock_data:
        config = _config(args, tokenizer, split="99,1,0")
        config.mock = True
        train, valid, _ = BlendedMegatronDatasetBuilder(
            MockGPTDataset, [train_samples, valid_samples, 0], is_built_on_rank, config
        ).build()
        return DataSetup(train, {"mock": valid}, ["mock"], ([], None))
    prefixes, weights = parse_data_path(args.data_path)
    check_prefixes(prefixes, "--data-path")
    valid_prefixes, _ = parse_data_path(args.valid_data_path)
    check_prefixes(valid_prefixes, "--valid-data-path")
    if valid_prefixes:
        config = _config(args, tokenizer, blend_per_split=[(prefixes, weights), None, None])
        train = BlendedMegatronDatasetBuilder(GPTDataset, [train_samples, 0, 0], is_built_on_rank, config).build()[0]
        valid = {}
        for prefix in valid_prefixes:
            config = _config(args, tokenizer, blend_per_split=[None, ([prefix], None), None])
            valid[domain_name(prefix)] = BlendedMegatronDatasetBuilder(
                GPTDataset, [0, valid_samples, 0], is_built_on_rank, config
            ).build()[1]
    else:
        config = _config(args, tokenizer, blend=(prefixes, weights), split=args.split)
        train, valid_set, _ = BlendedMegatronDatasetBuilder(
            GPTDataset, [train_samples, valid_samples, 0], is_built_on_rank, config
        ).build()
        valid = {"all": valid_set} if valid_set is not None else {}
    return DataSetup(train, valid, [domain_name(p) for p in prefixes], (prefixes, weights))


class SampleRange(torch.utils.data.Dataset):
    """Samples ``[start, start + n)`` of ``dataset`` (a deterministic, resumable order)."""

    def __init__(self, dataset, start: int):
        self.dataset, self.start = dataset, start

    def __len__(self):
        return len(self.dataset) - self.start

    def __getitem__(self, i):
        return self.dataset[self.start + i]


def batch_iterator(dataset, *, consumed_samples: int, micro_batch_size: int, dp_rank: int, dp_size: int,
                   num_workers: int = 0):
    """Micro-batches of this DP rank, in Megatron's order, starting after ``consumed_samples``.

    Global sample ``k`` of a step goes to DP rank ``(k // micro_batch_size) % dp_size`` within each
    ``micro_batch_size * dp_size`` block, so a DP group's micro-batch is one contiguous block.
    """
    group = micro_batch_size * dp_size

    def indices():
        start = consumed_samples
        while start + group <= len(dataset):
            first = start + dp_rank * micro_batch_size
            yield list(range(first, first + micro_batch_size))
            start += group

    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=list(indices()), num_workers=num_workers, collate_fn=_collate
    )
    return iter(loader)


def _collate(samples: list[dict]) -> dict:
    out = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        out[key] = torch.as_tensor(np.stack([np.asarray(v) for v in values]))
    return out
