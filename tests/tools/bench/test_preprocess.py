"""tools/bench/preprocess.py: its figure against the timings it measured, token counts, the input it builds."""

import statistics

import pytest
import sentencepiece as spm

from tools.bench import preprocess
from tools.data.fixtures import NAMES, fixture_path


def _spy(monkeypatch, name, calls):
    real = getattr(preprocess, name)

    def spy(*args):
        calls.append(real(*args))
        return calls[-1]

    monkeypatch.setattr(preprocess, name, spy)


def test_bench_preprocess_runs(documents_jsonl, tokenizer_model, capsys, monkeypatch):
    measured = {"time_preprocess": [], "time_raw": []}
    for name, calls in measured.items():
        _spy(monkeypatch, name, calls)
    ratio = preprocess.main(["--input", documents_jsonl, "--tokenizer-model", tokenizer_model,
                             "--workers", "1", "--rounds", "2"])
    # The figure is the median of the per-round ratios of what each variant measured.
    per_round = [(tp / sp) / (tr / sr) for (tp, sp), (tr, sr) in zip(measured["time_preprocess"], measured["time_raw"])]
    assert len(per_round) == 2 and ratio == pytest.approx(statistics.median(per_round))
    # Both count every token of every document, as SentencePiece encodes them (no end-of-document).
    processor = spm.SentencePieceProcessor(model_file=tokenizer_model)
    tokens = sum(len(processor.encode(t)) for t in preprocess.read_texts(documents_jsonl))
    assert {t for t, _ in measured["time_preprocess"] + measured["time_raw"]} == {tokens}
    out = capsys.readouterr().out
    assert (f"preprocessing throughput, SentencePieceTokenizer (preprocess / raw tokens/s, median [min, max] of 2 "
            f"rounds): {ratio:.4g} [") in out
    assert f"({tokens} tokens, " in out


def test_bench_preprocess_figure_and_verdict_from_known_timings(documents_jsonl, tokenizer_model, capsys,
                                                                monkeypatch):
    seconds = {"preprocess": iter([1.0, 2.0, 1.0]), "raw": iter([0.8, 1.0, 1.0])}
    monkeypatch.setattr(preprocess, "time_preprocess", lambda *a: (1000, next(seconds["preprocess"])))
    monkeypatch.setattr(preprocess, "time_raw", lambda *a: (1000, next(seconds["raw"])))
    ratio = preprocess.main(["--input", documents_jsonl, "--tokenizer-model", tokenizer_model, "--rounds", "3"])
    assert ratio == pytest.approx(0.8)  # round ratios raw s / preprocess s: 0.8, 0.5, 1.0
    assert "of 3 rounds): 0.8 [0.5, 1]; target >= 0.8: met" in capsys.readouterr().out


def test_bench_preprocess_refuses_different_token_counts(documents_jsonl, tokenizer_model, monkeypatch):
    monkeypatch.setattr(preprocess, "time_preprocess", lambda *a: (1000, 1.0))
    monkeypatch.setattr(preprocess, "time_raw", lambda *a: (999, 1.0))
    with pytest.raises(SystemExit, match="token counts differ: preprocess 1000, raw 999"):
        preprocess.main(["--input", documents_jsonl, "--tokenizer-model", tokenizer_model, "--rounds", "1"])


def test_bench_preprocess_repeats_fixtures_to_size(tmp_path):
    path = preprocess.write_repeated_fixtures(str(tmp_path / "c.jsonl"), megabytes=0.5)
    texts = preprocess.read_texts(path)
    assert 0.5e6 <= (tmp_path / "c.jsonl").stat().st_size < 1.0e6 and all(texts)
    # whole copies of the fixture corpus, in order, then the start of the next copy
    one_copy = [t for name in sorted(NAMES) for t in preprocess.read_texts(fixture_path(name))]
    assert texts[: len(one_copy)] == one_copy and texts == (one_copy * (len(texts) // len(one_copy) + 1))[: len(texts)]


def test_bench_every_tokenizer_type_in_one_command(tmp_path, capsys):
    """--stand-ins measures all five types in one call (stand-ins trained on the input) and prints the
    five figures together; each type's preprocessed tokens equal its raw encoding's (checked inside)."""
    ratios = preprocess.main(["--stand-ins", str(tmp_path / "stand_ins"), "--megabytes", "0.05", "--rounds", "1",
                              "--workers", "2", "--stand-in-vocab", "400"])
    assert list(ratios) == ["SentencePieceTokenizer", "GPT2BPETokenizer", "HuggingFaceTokenizer", "TikTokenizer",
                            "NullTokenizer"]
    out = capsys.readouterr().out
    summary = out[out.index("preprocess / raw tokens/s, 2 worker(s), median of 1 rounds (target >= 0.8):"):]
    for kind, ratio in ratios.items():
        assert ratio > 0 and f"  {kind:<24} {ratio:.3g}  " in summary
        assert f"CPU time per token, {kind} (raw / preprocess, median [min, max] of 1 rounds): " in out


def test_bench_types_selects_some_and_null_needs_no_training(tmp_path, capsys):
    ratios = preprocess.main(["--stand-ins", str(tmp_path / "s"), "--types", "NullTokenizer", "--megabytes", "0.05",
                              "--rounds", "1", "--workers", "1"])
    assert list(ratios) == ["NullTokenizer"] and not (tmp_path / "s").exists()
    assert "CPU s, load " in capsys.readouterr().out
