"""Stand-in tokenizer files of every ``--tokenizer-type`` on real text (:mod:`tools.data.stand_in_tokenizers`
trains them on the committed fixtures), and their ids computed independently of :mod:`megatron_patch.tokenizer`
(``from tests.helpers.tokenizer_files import ...``)."""

import base64
import json
import os

from tools.data import stand_in_tokenizers
from tools.data.fixtures import read_fixture
from tools.data.stand_in_tokenizers import EOT, bytes_to_unicode, train_byte_level_bpe  # noqa: F401
TIKTOKEN_SPECIALS = ["<unk>", "<s>", "</s>", "<mask>", "<pad>", "<cls>", "<sep>"]  # megatron-core's, in order


def fixture_texts() -> list[str]:
    """Real text: the committed plays, speeches and code, in file order."""
    return [d.text for name in ("books", "speeches", "code") for d in read_fixture(name)]


def write_tokenizer_files(out_dir: str) -> dict:
    """The stand-ins trained on :func:`fixture_texts`: ``{tokenizer type: build_tokenizer keywords}``."""
    return stand_in_tokenizers.write_tokenizer_files(out_dir, fixture_texts())


# GPT-2's split regex (Radford et al.'s encoder.py): contractions, letters, digits, other, whitespace.
GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def gpt2_reference(vocab: dict, merge_file: str):
    """GPT-2's byte-level BPE written out plainly: split, map bytes to characters, merge the best-ranked pair."""
    import regex

    with open(merge_file, encoding="utf-8") as handle:
        merges = [tuple(line.split()) for line in handle if line.strip() and not line.startswith("#version")]
    ranks, chars, split = {pair: i for i, pair in enumerate(merges)}, bytes_to_unicode(), regex.compile(GPT2_SPLIT)

    def bpe(word: str) -> list:
        parts = list(word)
        while len(parts) > 1:
            rank, i = min((ranks.get(pair, len(ranks)), i) for i, pair in enumerate(zip(parts, parts[1:])))
            if rank == len(ranks):
                break
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        return parts

    def encode(text: str) -> list:
        words = ("".join(chars[b] for b in piece.encode("utf-8")) for piece in split.findall(text))
        return [vocab[token] for word in words for token in bpe(word)]

    return encode


class Reference:
    """Ids, EOD and vocabulary of one stand-in, from the tokenizer's own library (not megatron_patch)."""

    def __init__(self, settings: dict):
        kind = settings["tokenizer_type"]
        if kind == "SentencePieceTokenizer":
            import sentencepiece

            sp = sentencepiece.SentencePieceProcessor(model_file=settings["tokenizer_model"])
            self.encode, self.eod, self.vocab_size = sp.encode, sp.eos_id(), sp.vocab_size()
        elif kind == "GPT2BPETokenizer":
            with open(settings["vocab_file"], encoding="utf-8") as handle:
                vocab = json.load(handle)
            self.encode = gpt2_reference(vocab, settings["merge_file"])
            self.eod, self.vocab_size = vocab[EOT], len(vocab)
        elif kind == "HuggingFaceTokenizer":
            from tokenizers import Tokenizer

            hf = Tokenizer.from_file(os.path.join(settings["tokenizer_model"], "tokenizer.json"))
            self.encode = lambda text: hf.encode(text, add_special_tokens=False).ids
            self.eod, self.vocab_size = hf.token_to_id(EOT), hf.get_vocab_size()
        elif kind == "TikTokenizer":
            import tiktoken
            from megatron.core.tokenizers.text.libraries.tiktoken_tokenizer import _PATTERN_TIKTOKEN_V2

            with open(settings["tokenizer_model"], encoding="utf-8") as handle:
                ranks = {base64.b64decode(r["token_bytes"]): r["rank"] + 1000 for r in json.load(handle)}
            specials = TIKTOKEN_SPECIALS + [f"<SPECIAL_{i}>" for i in range(len(TIKTOKEN_SPECIALS), 1000)]
            encoding = tiktoken.Encoding("reference", pat_str=_PATTERN_TIKTOKEN_V2, mergeable_ranks=ranks,
                                         special_tokens={t: i for i, t in enumerate(specials)})
            self.encode = lambda text: encoding.encode(text, allowed_special="all")
            self.eod, self.vocab_size = specials.index("</s>"), 1000 + len(ranks)
        else:
            self.encode = lambda text: [int(x) for x in text.split()]
            self.eod, self.vocab_size = settings["vocab_size"] - 1, settings["vocab_size"]


def null_texts(texts, vocab_size: int = 1000) -> list[str]:
    """Texts for NullTokenizer: each text's UTF-8 bytes as ids (below ``vocab_size``), separated by spaces."""
    return [" ".join(str(b % (vocab_size - 1)) for b in text.encode("utf-8")[:2000]) for text in texts]
