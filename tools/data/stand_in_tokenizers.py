"""Stand-in tokenizer files of every ``--tokenizer-type``, trained offline on given texts (tests, benchmarks).

A GPT-2-style byte-level BPE is trained with the ``tokenizers`` library and written three ways: a
Hugging Face ``tokenizer.json``, GPT-2's ``vocab.json``/``merges.txt``, and megatron-core's tiktoken
JSON (the 256 bytes, then one rank per merge). A SentencePiece BPE is trained on the same texts.
They are not any released model's vocabulary: use them where the real files cannot be had offline.
"""

import base64
import json
import os

EOT = "<|endoftext|>"
# NullTokenizer reads ids as text: no file, 1000 ids (999 is its EOD).
NULL_STAND_IN = {"tokenizer_type": "NullTokenizer", "vocab_size": 1000}


def bytes_to_unicode() -> dict:
    """GPT-2's printable stand-in character for each byte (the alphabet of byte-level BPE)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
            *range(ord("\u00ae"), ord("\u00ff") + 1)]
    extra = iter(range(256, 512))
    return {b: chr(b) if b in keep else chr(next(extra)) for b in range(256)}


def train_byte_level_bpe(texts, vocab_size: int = 700):
    """A GPT-2-style byte-level BPE (no prefix space) with ``<|endoftext|>`` as its only special token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def write_tokenizer_files(out_dir: str, texts, vocab_size: int = 700, sentencepiece_vocab_size: int = 600) -> dict:
    """Every stand-in under ``out_dir``: ``{tokenizer type: build_tokenizer keyword arguments}``."""
    import sentencepiece

    bpe = train_byte_level_bpe(texts, vocab_size)
    hf_dir, gpt2_dir = os.path.join(out_dir, "hf"), os.path.join(out_dir, "gpt2")
    os.makedirs(hf_dir, exist_ok=True)
    os.makedirs(gpt2_dir, exist_ok=True)
    bpe.save(os.path.join(hf_dir, "tokenizer.json"))
    bpe.model.save(gpt2_dir)  # vocab.json, merges.txt
    model = json.loads(bpe.to_str())["model"]
    decode = {c: b for b, c in bytes_to_unicode().items()}
    pieces = {bytes([b]): None for b in range(256)}  # ordered, each piece once
    for merge in model["merges"]:
        left, right = merge.split(" ") if isinstance(merge, str) else merge
        pieces.setdefault(bytes(decode[c] for c in left + right))
    ranks = [{"rank": i, "token_bytes": base64.b64encode(p).decode(), "token_str": p.decode("utf-8", "replace")}
             for i, p in enumerate(pieces)]
    tiktoken_path = os.path.join(out_dir, "tiktoken.json")
    with open(tiktoken_path, "w", encoding="utf-8") as handle:
        json.dump(ranks, handle)
    lines = os.path.join(out_dir, "lines.txt")
    with open(lines, "w", encoding="utf-8") as handle:
        handle.write("\n".join(line for text in texts for line in text.split("\n") if line.strip()))
    sentencepiece.SentencePieceTrainer.train(input=lines, model_prefix=os.path.join(out_dir, "sp"),
                                             vocab_size=sentencepiece_vocab_size,
                                             model_type="bpe", byte_fallback=True, minloglevel=2,
                                             hard_vocab_limit=False)  # at most that many on a small text
    return {
        "SentencePieceTokenizer": {"tokenizer_type": "SentencePieceTokenizer",
                                   "tokenizer_model": os.path.join(out_dir, "sp.model")},
        "GPT2BPETokenizer": {"tokenizer_type": "GPT2BPETokenizer", "vocab_file": os.path.join(gpt2_dir, "vocab.json"),
                             "merge_file": os.path.join(gpt2_dir, "merges.txt")},
        "HuggingFaceTokenizer": {"tokenizer_type": "HuggingFaceTokenizer", "tokenizer_model": hf_dir},
        "TikTokenizer": {"tokenizer_type": "TikTokenizer", "tokenizer_model": tiktoken_path},
        "NullTokenizer": dict(NULL_STAND_IN),
    }
