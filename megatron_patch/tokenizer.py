"""Tokenizers for training and preprocessing, chosen by Megatron-LM's flags.

One builder serves ``pretrain_*.py`` (through :func:`megatron_patch.arguments.resolve_config`) and
``tools/preprocess_data.py``, so both see the same ids, the same end-of-document (EOD) id and the
same vocabulary (padded by :func:`megatron_patch.arguments.padded_vocab_size`).

``--tokenizer-type``:
- ``SentencePieceTokenizer``: ``--tokenizer-model`` a SentencePiece ``.model`` (Llama-2's, ours);
  EOD is its eos piece.
- ``GPT2BPETokenizer``: ``--vocab-file`` (GPT-2's ``vocab.json``/``encoder.json``) and
  ``--merge-file`` (``merges.txt``); EOD is ``<|endoftext|>``.
- ``HuggingFaceTokenizer``: ``--tokenizer-model`` a ``tokenizer.json`` or a directory holding one
  (with its ``tokenizer_config.json``, if any), read offline; EOD is its eos token.
- ``TikTokenizer``: ``--tokenizer-model`` megatron-core's tiktoken JSON (a list of ``{"rank",
  "token_bytes", "token_str"}``), ``--tiktoken-num-special-tokens`` special ids first; EOD ``</s>``.
- ``NullTokenizer``: the text is already ids separated by spaces; ``--vocab-size`` ids, the last EOD.

All but GPT-2 BPE load through ``megatron.core.tokenizers.MegatronTokenizer.from_pretrained``.
Every object here has what megatron-core's datasets read (``vocab_size``, ``eod``, ``pad``,
``unique_identifiers``), ``tokenize(text)`` and ``tokenize_batch(texts, threads)`` (the same ids,
through the library's batch encoder, for preprocessing). A file that is not what its flag says is
one :class:`ArgumentError` line naming the flag.
"""

import json
import os

import numpy as np

from .errors import ArgumentError, one_line, require_module

TOKENIZER_TYPES = ("SentencePieceTokenizer", "GPT2BPETokenizer", "HuggingFaceTokenizer", "TikTokenizer",
                   "NullTokenizer")
# The DataConfig fields (flags) a tokenizer is built from; tools add the same flags (add_tokenizer_flags).
TOKENIZER_FIELDS = ("tokenizer_type", "tokenizer_model", "vocab_file", "merge_file", "tiktoken_pattern",
                    "tiktoken_num_special_tokens")
# End-of-document candidates for a tokenizer.json without an eos token of its own (a bare file from the
# `tokenizers` library has only its special tokens).
EOD_CANDIDATES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eos|>")
# megatron-core's TikTokenizer default vocabulary (DEFAULT_TIKTOKEN_MAX_VOCAB).
TIKTOKEN_MAX_VOCAB = 2**17


class Tokenizer:
    """The fields and encoders of one tokenizer; built by :func:`build_tokenizer`."""

    def __init__(self, kind: str, *, vocab_size: int, eod: int, pad: int | None, files: dict, encode,
                 encode_batch=None):
        self.kind, self.vocab_size, self.eod = kind, int(vocab_size), int(eod)
        # -1 (megatron-core's "no pad token") when the tokenizer has none: it never matches a real id.
        self.pad = -1 if pad is None else int(pad)
        self.eos = self.eod
        self._encode, self._encode_batch = encode, encode_batch
        # Part of the datasets' cache key (megatron-core hashes it into the index file names).
        self.unique_identifiers = {"class": kind, "vocab_size": self.vocab_size,
                                   **{k: os.path.abspath(v) for k, v in files.items()}}

    def tokenize(self, text: str) -> list[int]:
        """The ids of ``text`` (no EOD)."""
        return list(self._encode(text))

    def tokenize_batch(self, texts: list[str], threads: int = 1) -> list[list[int]]:
        """``[tokenize(t) for t in texts]``, through the library's batch encoder (``threads`` threads)."""
        if self._encode_batch is None:
            return [self.tokenize(t) for t in texts]
        return self._encode_batch(texts, threads)


def _require_file(flag: str, path: str | None, what: str) -> str:
    if path is None:
        raise ArgumentError(f"{flag} is not set; pass {what}")
    if not os.path.isfile(path):
        raise ArgumentError(f"{flag} {path}: no such file; pass {what}")
    return path


def _not_what(flag: str, path: str, what: str, err: BaseException | None = None) -> ArgumentError:
    why = f" ({one_line(err, 120)})" if err is not None else ""
    return ArgumentError(f"{flag} {path}: not {what}{why}; pass {what}")


def _megatron(path: str | None, library: str, **kwargs):
    from megatron.core.tokenizers import MegatronTokenizer

    return MegatronTokenizer.from_pretrained(tokenizer_path=path, metadata_path={"library": library}, **kwargs)


def sentencepiece_tokenizer(model: str | None) -> Tokenizer:
    """``--tokenizer-model`` a SentencePiece ``.model``, through megatron-core (eos is EOD)."""
    what = "a SentencePiece .model file (tools/train_tokenizer.py writes one)"
    _require_file("--tokenizer-model", model, what)
    try:
        core = _megatron(model, "sentencepiece")
    except Exception as err:  # noqa: BLE001 - any load failure means "not a SentencePiece model"
        raise _not_what("--tokenizer-model", model, "a SentencePiece model", err) from None
    processor = core._tokenizer.tokenizer  # megatron-core's text_to_ids is processor.encode_as_ids
    return Tokenizer("SentencePieceTokenizer", vocab_size=core.vocab_size, eod=core.eod, pad=processor.pad_id(),
                     files={"model": model}, encode=core.tokenize,
                     encode_batch=lambda texts, threads: processor.encode(texts, num_threads=threads))


def gpt2_bpe_tokenizer(vocab_file: str | None, merge_file: str | None) -> Tokenizer:
    """``--vocab-file``/``--merge-file``: GPT-2's byte-level BPE, with the ``tokenizers`` library.

    Not through megatron-core: its GPT-2 path (library "megatron") loads ``gpt2`` from the Hugging
    Face Hub and hands the vocabulary file in as the merges file (``MegatronHFTokenizer``), so it
    cannot read local files offline. GPT-2's own scheme is rebuilt here: its split regex
    (``ByteLevel`` pre-tokenizer), byte-to-unicode map and merges; no prefix space, no special-token
    parsing inside the text (as Megatron-LM's GPT2BPETokenizer).
    """
    require_module("tokenizers", "--tokenizer-type GPT2BPETokenizer")
    from tokenizers import Tokenizer as RustTokenizer, decoders, models, pre_tokenizers

    _require_file("--vocab-file", vocab_file, "GPT-2's vocab.json")
    _require_file("--merge-file", merge_file, "GPT-2's merges.txt")
    try:
        with open(vocab_file, encoding="utf-8") as handle:
            vocab = json.load(handle)
        if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
            raise ValueError("not a JSON object of token -> id")
    except (ValueError, UnicodeDecodeError) as err:
        raise _not_what("--vocab-file", vocab_file, "GPT-2's vocab.json", err) from None
    if "<|endoftext|>" not in vocab:
        raise ArgumentError(f"--vocab-file {vocab_file}: has no <|endoftext|> token (GPT-2's end of document); "
                            "pass GPT-2's vocab.json")
    try:
        bpe = models.BPE.from_file(vocab_file, merge_file)
    except Exception as err:  # noqa: BLE001 - the Rust loader's message says which line is wrong
        raise _not_what("--merge-file", merge_file, "GPT-2's merges.txt matching --vocab-file", err) from None
    rust = RustTokenizer(bpe)
    rust.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    rust.decoder = decoders.ByteLevel()
    return _rust_backed("GPT2BPETokenizer", rust, vocab_size=len(vocab), eod=vocab["<|endoftext|>"], pad=None,
                        files={"vocab_file": vocab_file, "merge_file": merge_file})


def _rust_backed(kind, rust, *, vocab_size, eod, pad, files, encode=None) -> Tokenizer:
    """A tokenizer whose batches a ``tokenizers.Tokenizer`` encodes (no added BOS/EOS: the caller appends EOD)."""
    # encode_batch_fast (tokenizers >= 0.20) skips the offsets; the ids are the same.
    batch = getattr(rust, "encode_batch_fast", rust.encode_batch)

    def encode_batch(texts, threads):
        # The Rust thread pool is per process: workers run one thread each (TOKENIZERS_PARALLELISM=false,
        # set by the preprocessing workers); a lone process uses its cores.
        return [e.ids for e in batch(texts, add_special_tokens=False)]

    return Tokenizer(kind, vocab_size=vocab_size, eod=eod, pad=pad, files=files, encode_batch=encode_batch,
                     encode=encode or (lambda text: rust.encode(text, add_special_tokens=False).ids))


def huggingface_tokenizer(model: str | None) -> Tokenizer:
    """``--tokenizer-model`` a ``tokenizer.json`` or its directory, through megatron-core (AutoTokenizer, offline)."""
    what = "a Hugging Face tokenizer.json or a directory holding one"
    if model is None:
        raise ArgumentError(f"--tokenizer-model is not set; pass {what}")
    directory = model if os.path.isdir(model) else os.path.dirname(os.path.abspath(model))
    path = os.path.join(directory, "tokenizer.json") if os.path.isdir(model) else model
    if not os.path.isfile(path):
        raise ArgumentError(f"--tokenizer-model {model}: no tokenizer.json there; pass {what}")
    try:
        with open(path, encoding="utf-8") as handle:
            spec = json.load(handle)
        if not isinstance(spec, dict) or "model" not in spec:
            raise ValueError("no 'model' entry")
    except (ValueError, UnicodeDecodeError) as err:
        raise _not_what("--tokenizer-model", path, "a Hugging Face tokenizer.json", err) from None
    if os.path.basename(path) != "tokenizer.json":
        raise ArgumentError(f"--tokenizer-model {model}: transformers reads the file only under the name "
                            "tokenizer.json; rename it or pass its directory holding tokenizer.json")
    require_module("transformers", "--tokenizer-type HuggingFaceTokenizer")
    # A local directory, never the Hub: AutoTokenizer would look a missing file up online.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        core = _megatron(directory, "huggingface", use_fast=True)
    except Exception as err:  # noqa: BLE001 - transformers raises many kinds on a bad directory
        raise _not_what("--tokenizer-model", directory, what, err) from None
    hf = core._tokenizer
    if core.eod is None:
        specials = {t["content"] for t in spec.get("added_tokens", []) if t.get("special")}
        found = next((t for t in EOD_CANDIDATES if t in specials), None)
        if found is None:
            raise ArgumentError(f"--tokenizer-model {model}: names no end-of-document token (no eos_token in "
                                f"tokenizer_config.json, none of {' '.join(EOD_CANDIDATES)} among its special "
                                'tokens); add "eos_token" to tokenizer_config.json beside tokenizer.json')
        hf.add_special_tokens({"eos_token": found})  # already in the vocabulary: no id is added
    return _rust_backed("HuggingFaceTokenizer", hf.tokenizer.backend_tokenizer, vocab_size=core.vocab_size,
                        eod=core.eod, pad=hf.pad_id, files={"model": path}, encode=core.tokenize)


def tiktoken_tokenizer(model: str | None, vocab_size: int | None, pattern: str, num_special_tokens: int) -> Tokenizer:
    """``--tokenizer-model`` megatron-core's tiktoken JSON, through megatron-core.

    ``--vocab-size`` is the vocabulary with the special ids (megatron-core's ``vocab_size``); without
    it, the file's ranks plus the special ids, at most megatron-core's default 2**17.
    """
    what = 'megatron-core\'s tiktoken JSON (a list of {"rank", "token_bytes", "token_str"})'
    require_module("tiktoken", "--tokenizer-type TikTokenizer")
    _require_file("--tokenizer-model", model, what)
    try:
        with open(model, encoding="utf-8") as handle:
            ranks = json.load(handle)
        if not isinstance(ranks, list) or not ranks or not isinstance(ranks[0], dict) or "token_bytes" not in ranks[0]:
            raise ValueError("not a list of rank entries")
    except (ValueError, UnicodeDecodeError) as err:
        raise ArgumentError(f"--tokenizer-model {model}: not {what} ({one_line(err, 80)}); a .tiktoken ranks "
                            "file or a tekken.json is not read by megatron-core: pass the model's tokenizer.json "
                            "with --tokenizer-type HuggingFaceTokenizer") from None
    size = vocab_size or min(TIKTOKEN_MAX_VOCAB, len(ranks) + num_special_tokens)
    if size > len(ranks) + num_special_tokens or size <= num_special_tokens:
        raise ArgumentError(f"--vocab-size {size}: {model} holds {len(ranks)} ranks after "
                            f"--tiktoken-num-special-tokens {num_special_tokens}; use at most "
                            f"{len(ranks) + num_special_tokens}")
    try:
        core = _megatron(model, "tiktoken", pattern=pattern, vocab_size=size, num_special_tokens=num_special_tokens)
    except Exception as err:  # noqa: BLE001 - megatron-core asserts on a malformed rank list
        raise _not_what("--tokenizer-model", model, what, err) from None
    encoding = core._tokenizer.tokenizer  # megatron-core encodes with allowed_special="all"

    def encode_batch(texts, threads):
        return encoding.encode_batch(texts, num_threads=threads, allowed_special="all")

    return Tokenizer("TikTokenizer", vocab_size=core.vocab_size, eod=core.eod, pad=core.pad, files={"model": model},
                     encode=core.tokenize, encode_batch=encode_batch)


def _null_library() -> str:
    """megatron-core's name of its NullTokenizer library: ``null`` (0.16), ``null-text`` (0.19)."""
    from megatron.core.tokenizers import megatron_tokenizer

    return "null-text" if "null-text" in getattr(megatron_tokenizer, "TEXT_LIBRARIES", ()) else "null"


def null_tokenizer(vocab_size: int | None) -> Tokenizer:
    """Ids as text (``"5 17 3"``): ``vocab_size`` ids, the last one EOD (megatron-core's, one id fewer)."""
    if vocab_size is None:
        raise ArgumentError("--vocab-size is not set; pass it (NullTokenizer ids are below it), or --tokenizer-model")
    if vocab_size < 2:
        raise ArgumentError(f"--vocab-size {vocab_size}: NullTokenizer needs at least 2 ids (one is EOD)")
    # megatron-core 0.16's "null" NullTokenizer(n) has n ids plus EOD, 0.19's "null-text" n ids with
    # EOD the last of them; ours keeps --vocab-size ids in all, EOD the last, under both.
    library = _null_library()
    core = _megatron(None, library, vocab_size=vocab_size if library == "null-text" else vocab_size - 1)

    def check(ids):
        values = np.asarray(ids)
        if values.size and not (values.min() >= 0 and values.max() < vocab_size):
            raise ValueError(f"an id outside [0, {vocab_size})")
        return ids

    def encode_batch(texts, threads):
        # megatron-core's text_to_ids (int() of each space-separated field) straight into an array.
        return [check(np.fromiter(map(int, text.split(" ")), dtype=np.int64)) for text in texts]

    return Tokenizer("NullTokenizer", vocab_size=core.vocab_size, eod=core.eod, pad=None, files={},
                     encode=lambda text: check(core.tokenize(text)), encode_batch=encode_batch)


def build_tokenizer(tokenizer_type: str, tokenizer_model: str | None = None, vocab_size: int | None = None, *,
                    vocab_file: str | None = None, merge_file: str | None = None, tiktoken_pattern: str = "v2",
                    tiktoken_num_special_tokens: int = 1000) -> Tokenizer:
    """The tokenizer the flags name (``--tokenizer-type`` and its files, ``--vocab-size``)."""
    if tokenizer_type == "SentencePieceTokenizer":
        return sentencepiece_tokenizer(tokenizer_model)
    if tokenizer_type == "GPT2BPETokenizer":
        return gpt2_bpe_tokenizer(vocab_file, merge_file)
    if tokenizer_type == "HuggingFaceTokenizer":
        return huggingface_tokenizer(tokenizer_model)
    if tokenizer_type == "TikTokenizer":
        return tiktoken_tokenizer(tokenizer_model, vocab_size, tiktoken_pattern, tiktoken_num_special_tokens)
    if tokenizer_type == "NullTokenizer":
        return null_tokenizer(vocab_size)
    raise ArgumentError(f"--tokenizer-type {tokenizer_type}: choose from {', '.join(TOKENIZER_TYPES)}")


def tokenizer_settings(values) -> dict:
    """The tokenizer flags of a parsed namespace or :class:`~megatron_patch.config.DataConfig` (picklable)."""
    return {field: getattr(values, field) for field in TOKENIZER_FIELDS}


def add_tokenizer_flags(parser):
    """The training's tokenizer flags (and ``--vocab-size``, ``--make-vocab-size-divisible-by``) on a tool's parser."""
    from .config import DataConfig, ModelConfig, add_flags

    add_flags(parser, DataConfig, "tokenizer (the flags of pretrain_*.py)", only=TOKENIZER_FIELDS)
    add_flags(parser, ModelConfig, "vocabulary", only=("vocab_size", "make_vocab_size_divisible_by"))


def tokenizer_flags(settings: dict) -> list[str]:
    """:func:`build_tokenizer` keywords back to flags: the ones set (``--tiktoken-*`` with TikTokenizer only)."""
    tiktoken = settings.get("tokenizer_type") == "TikTokenizer"
    return [x for field, value in settings.items() if value is not None and (tiktoken or not field.startswith("tiktoken"))
            for x in (f"--{field.replace('_', '-')}", str(value))]
