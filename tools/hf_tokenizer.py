"""A run's tokenizer (its ``run.json`` data section) as Hugging Face tokenizer files.

One writer per ``--tokenizer-type`` (megatron_patch/tokenizer.py); each builds a transformers
tokenizer offline from the run's own files and saves it beside the exported model:

- ``SentencePieceTokenizer``: the ``.model``'s pieces and BPE merges as a fast tokenizer (byte
  fallback, ``▁`` for spaces, the dummy prefix if the model adds one), plus the ``.model`` itself.
  No BOS or EOS is added, as the training data has none but the EOD between documents:
  ``tokenizer(text)`` gives the ids training saw.
- ``GPT2BPETokenizer``: ``vocab.json`` + ``merges.txt`` as ``GPT2Tokenizer``.
- ``HuggingFaceTokenizer``: the run's tokenizer directory (or ``tokenizer.json``) as it loads.

``TikTokenizer`` and ``NullTokenizer`` have no writer, and a run whose tokenizer files are gone
cannot be written: the export then has no tokenizer (it says why) and tools/evaluate.py asks for
``--tokenizer``.
"""

import dataclasses
import json
import os
import shutil

from megatron_patch.files import write_json_atomically



SPACE = "\u2581"  # SentencePiece's whitespace piece, "▁"


class MissingFile(Exception):
    """A tokenizer file that run.json names is not there."""


@dataclasses.dataclass
class Exported:
    kind: str  # the --tokenizer-type
    special_ids: dict  # bos/eos/pad token ids for config.json


def _special_ids(tokenizer) -> dict:
    return {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id}


def _file(data: dict, key: str) -> str:
    path, flag = data.get(key), f"--{key.replace('_', '-')}"
    if not path:
        raise MissingFile(f"the run has no {flag}")
    if not os.path.exists(path):
        raise MissingFile(f"the run's {flag} {path} is not there")
    return path


def _sentencepiece(data: dict, out: str):
    """The pieces and merges as a ``tokenizers`` BPE with SentencePiece's own text handling.

    SentencePiece always adds its dummy prefix; the Metaspace pre-tokenizer of transformers'
    ``LlamaTokenizer`` skips it when the text starts with a space (" a" gave a different first
    piece). So the prefix and the spaces are a normalizer here, and the tokenizer is saved as the
    generic fast tokenizer, which loads tokenizer.json as it is.
    """
    import sentencepiece
    from tokenizers import Tokenizer, decoders, normalizers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast
    from transformers.tokenization_utils_sentencepiece import SentencePieceExtractor

    path = _file(data, "tokenizer_model")
    sp = sentencepiece.SentencePieceProcessor(model_file=path)
    vocab, _, merges = SentencePieceExtractor(path).extract()
    dummy_prefix = sp.encode("a", out_type=str)[0].startswith(SPACE)
    piece = lambda i: sp.id_to_piece(i) if i >= 0 else None  # noqa: E731 - -1: the model has no such token
    backend = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token=piece(sp.unk_id()), fuse_unk=True,
                            byte_fallback=True))
    backend.normalizer = normalizers.Sequence([*([normalizers.Prepend(SPACE)] if dummy_prefix else []),
                                               normalizers.Replace(" ", SPACE)])
    backend.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse(),
                                         *([decoders.Strip(" ", 1, 0)] if dummy_prefix else [])])
    special = {"unk_token": piece(sp.unk_id()), "bos_token": piece(sp.bos_id()), "eos_token": piece(sp.eos_id())}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, clean_up_tokenization_spaces=False,
                                        **{k: v for k, v in special.items() if v is not None})
    tokenizer.save_pretrained(out)
    _name_class(out, "PreTrainedTokenizerFast")  # transformers 5 writes its new name, which 4.x cannot load
    shutil.copyfile(path, os.path.join(out, "tokenizer.model"))
    return tokenizer


def _name_class(out: str, name: str) -> None:
    path = os.path.join(out, "tokenizer_config.json")
    with open(path) as handle:
        config = json.load(handle)
    write_json_atomically(path, dict(config, tokenizer_class=name), indent=2)


def _gpt2_bpe(data: dict, out: str):
    from transformers import GPT2Tokenizer

    # from_pretrained of a directory with these two names (the constructor of transformers 5 gave
    # a tokenizer that encoded everything to [] here).
    shutil.copyfile(_file(data, "vocab_file"), os.path.join(out, "vocab.json"))
    shutil.copyfile(_file(data, "merge_file"), os.path.join(out, "merges.txt"))
    tokenizer = GPT2Tokenizer.from_pretrained(out)
    tokenizer.save_pretrained(out)
    return tokenizer


def _hugging_face(data: dict, out: str):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = _file(data, "tokenizer_model")
    if os.path.isdir(path):
        tokenizer = AutoTokenizer.from_pretrained(path)
    else:
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=path)
    tokenizer.save_pretrained(out)
    return tokenizer


WRITERS = {"SentencePieceTokenizer": _sentencepiece, "GPT2BPETokenizer": _gpt2_bpe,
           "HuggingFaceTokenizer": _hugging_face}


def export_tokenizer(data: dict, out: str) -> tuple[Exported | None, str]:
    """Write the HF tokenizer files of run.json's ``data`` section into ``out``: ``(what, note)``.

    ``what`` is None when nothing was written; ``note`` says what was written, or why not.
    """
    kind = data.get("tokenizer_type")
    writer = WRITERS.get(kind)
    if writer is None:
        return None, f"none: this tool writes no {kind} tokenizer; pass --tokenizer to tools/evaluate.py"
    try:
        return Exported(kind, _special_ids(writer(data, out))), kind
    except MissingFile as err:
        return None, f"none: {err}"
