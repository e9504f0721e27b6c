"""Tokenizers for training: the few fields megatron-core's datasets read (``vocab_size``, ``eod``, ``pad``).

``--tokenizer-type SentencePieceTokenizer`` reads ``--tokenizer-model`` (a SentencePiece
``.model``); ``NullTokenizer`` takes the ids in the data as tokens (``--vocab-size`` of them, the
last one EOD), as ``--mock-data`` does. A file that is not what its flag says is one error line.
"""

import os

from .errors import ArgumentError, one_line


class SentencePieceTokenizer:
    """A SentencePiece model file."""

    def __init__(self, model_path: str):
        import sentencepiece

        if not os.path.isfile(model_path):
            raise ArgumentError(f"--tokenizer-model {model_path}: no such file")
        try:
            self.processor = sentencepiece.SentencePieceProcessor(model_file=model_path)
        except Exception as err:  # noqa: BLE001 - any load failure means "not a SentencePiece model"
            raise ArgumentError(f"--tokenizer-model {model_path}: not a SentencePiece model ({one_line(err, 120)}); "
                                "pass the .model file tools/train_tokenizer.py writes") from None
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


def build_tokenizer(tokenizer_type: str, tokenizer_model: str | None, vocab_size: int | None):
    """The tokenizer the flags name (``--tokenizer-type``, ``--tokenizer-model``, ``--vocab-size``)."""
    if tokenizer_model is not None and tokenizer_type == "SentencePieceTokenizer":
        return SentencePieceTokenizer(tokenizer_model)
    if vocab_size is None:
        raise ArgumentError("--vocab-size is not set; pass it, or --tokenizer-model")
    return NullTokenizer(vocab_size)
