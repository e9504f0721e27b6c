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


# Text a written tokenizer must split as the original does before it is written (spaces, digits, NFKC cases).
PROBES = ("Hello world.", "  two leading spaces", "trailing  ", "a  b\tc\n\nd", "digits 0123456789 and 3.14",
          "\ufb01 ligature, \uff21 full width, \u00bd", "unicode: \u00fc \u00df \u2211 \U0001f642 \u9f98", "", "\n", " ")


class NotWritten(Exception):
    """Why a tokenizer is not written: a file run.json names is gone, or no exact counterpart."""


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
        raise NotWritten(f"the run has no {flag}")
    if not os.path.exists(path):
        raise NotWritten(f"the run's {flag} {path} is not there")
    return path


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte, i = data[i], i + 1
        value, shift = value | (byte & 0x7F) << shift, shift + 7
        if not byte & 0x80:
            return value, i


def _fields(data: bytes) -> dict:
    """A protobuf message's fields, ``{number: [values]}`` (varints as ints, the rest as bytes)."""
    out, i = {}, 0
    while i < len(data):
        key, i = _varint(data, i)
        wire = key & 7
        if wire == 0:
            value, i = _varint(data, i)
        elif wire == 2:
            size, i = _varint(data, i)
            value, i = data[i:i + size], i + size
        else:  # 1: 8 bytes, 5: 4 bytes (the model has no groups)
            size = 8 if wire == 1 else 4
            value, i = data[i:i + size], i + size
        out.setdefault(key >> 3, []).append(value)
    return out


def normalizer_spec(model_proto: bytes) -> dict:
    """The SentencePiece model's normalisation, read without protobuf: ``charsmap`` (NFKC and the like,
    empty for identity), ``dummy_prefix``, ``collapse_spaces`` (remove_extra_whitespaces)."""
    spec = _fields(_fields(model_proto).get(3, [b""])[-1])  # ModelProto.normalizer_spec
    return {"charsmap": spec.get(2, [b""])[-1], "dummy_prefix": bool(spec.get(3, [1])[-1]),
            "collapse_spaces": bool(spec.get(4, [1])[-1])}  # proto2 defaults: both true


def _sentencepiece(data: dict, out: str):
    """The pieces and merges as a ``tokenizers`` BPE with SentencePiece's own text handling.

    SentencePiece always adds its dummy prefix; the Metaspace pre-tokenizer of transformers'
    ``LlamaTokenizer`` skips it when the text starts with a space (" a" gave a different first
    piece). So normalisation (the model's own character map, collapsed spaces), prefix and
    spaces are a normalizer here, checked on :data:`PROBES` against SentencePiece, and the
    tokenizer is saved as the generic fast tokenizer, which loads tokenizer.json as it is.
    """
    import sentencepiece
    from tokenizers import Regex, Tokenizer, decoders, normalizers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast
    from transformers.tokenization_utils_sentencepiece import SentencePieceExtractor

    path = _file(data, "tokenizer_model")
    sp = sentencepiece.SentencePieceProcessor(model_file=path)
    vocab, _, merges = SentencePieceExtractor(path).extract()
    spec = normalizer_spec(sp.serialized_model_proto())
    dummy_prefix = spec["dummy_prefix"]
    piece = lambda i: sp.id_to_piece(i) if i >= 0 else None  # noqa: E731 - -1: the model has no such token
    backend = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token=piece(sp.unk_id()), fuse_unk=True,
                            byte_fallback=True))
    steps = [normalizers.Precompiled(spec["charsmap"])] if spec["charsmap"] else []
    if spec["collapse_spaces"]:
        steps += [normalizers.Replace(Regex("^ +| +$"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    steps += [normalizers.Prepend(SPACE)] if dummy_prefix else []
    backend.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", SPACE)])
    backend.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse(),
                                         *([decoders.Strip(" ", 1, 0)] if dummy_prefix else [])])
    for text in PROBES:
        if backend.encode(text, add_special_tokens=False).ids != sp.encode(text):
            raise NotWritten(f"no exact Hugging Face counterpart of this SentencePiece model's text handling "
                             f"(it splits {text!r} otherwise)")
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
    except NotWritten as err:
        return None, f"none: {err}"
