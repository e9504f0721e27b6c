"""The one flag pattern: every flag is a field of a frozen section, with its help and range beside it."""

import dataclasses
import typing

import pytest

from megatron_patch.arguments import NO_EFFECT_FLAGS, NO_EFFECT_VALUED_FLAGS, SECTIONS, build_parser
from megatron_patch.config import RunConfig, flag_name
from megatron_patch.errors import ArgumentError
from tests.helpers.config import TINY_FLAGS, config_of, tiny_config

FLAG_FIELDS = [(cls, f) for cls, _ in SECTIONS.values() for f in dataclasses.fields(cls) if "help" in f.metadata]


def test_every_field_is_one_flag_and_every_flag_a_field():
    parser = build_parser("llama")
    options = {o for action in parser._actions for o in action.option_strings} - {"-h", "--help"}
    declared = {flag_name(cls, f) for cls, f in FLAG_FIELDS}
    aliases = {a for _, f in FLAG_FIELDS for a in f.metadata["aliases"]}
    assert options == declared | aliases | set(NO_EFFECT_FLAGS) | set(NO_EFFECT_VALUED_FLAGS)
    assert len(declared) == len(FLAG_FIELDS)  # no two fields share a flag


def test_help_comes_from_the_field_metadata(monkeypatch):
    monkeypatch.setenv("COLUMNS", "10000")  # no wrapping (argparse breaks lines at hyphens too)
    text = " ".join(build_parser("llama").format_help().split())
    for cls, f in FLAG_FIELDS:
        assert " ".join(f.metadata["help"].split()) in text, flag_name(cls, f)
    assert "--lr LR peak learning rate (default: 0.0003)" in text


def test_sections_are_frozen_and_typed():
    config = tiny_config("--reweight-strategy", "linupper", "--lr", "1e-3", world_size=2)
    assert isinstance(config, RunConfig)
    for name in ("model", "parallel", "training", "reweight"):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(getattr(config, name), "seed", 1)
    assert config.training.lr == 1e-3 and isinstance(config.model.num_layers, int)
    assert config.parallel.data_parallel_size == 2 and config.training.num_microbatches == 1
    assert config.model.padded_vocab_size == 128  # 64 padded to a multiple of 128 x TP 1
    assert config.as_dict()["reweight"]["strategy"] == "linupper"


def test_aliases_set_the_same_field():
    flags = ["--model", "tiny", "--dry-run", "--vocab-size", "64", "--valid-data-path", "v"]
    assert config_of([*flags, "--train-data-path", "a", "b"]).data.data_path == ["a", "b"]
    assert config_of([*flags, "--data-path", "a", "b"]).data.data_path == ["a", "b"]


def _outside(field, hint):
    """A value just outside ``field``'s bounds, as typed on the command line."""
    meta = field.metadata
    is_int = int in (typing.get_args(hint) or (hint,))
    if meta["minimum"] is not None:
        return str(int(meta["minimum"]) - 1 if is_int else meta["minimum"] - 0.5)
    if meta["above"] is not None:
        return str(int(meta["above"]) if is_int else meta["above"])
    if meta["maximum"] is not None:
        return str(meta["maximum"] + 1 if is_int else meta["maximum"] + 0.5)
    return str(meta["below"])


BOUNDED = [(cls, f) for cls, f in FLAG_FIELDS
           if any(f.metadata[b] is not None for b in ("minimum", "above", "maximum", "below"))]


@pytest.mark.parametrize("cls, field", BOUNDED, ids=[flag_name(c, f) for c, f in BOUNDED])
def test_every_value_out_of_range_is_one_line_naming_the_flag(cls, field):
    value = _outside(field, typing.get_type_hints(cls)[field.name])
    name = flag_name(cls, field)
    with pytest.raises(ArgumentError) as err:
        config_of([*TINY_FLAGS, name, value])
    assert str(err.value).startswith(f"{name} ") and "\n" not in str(err.value)
    assert len(BOUNDED) >= 40  # sizes, counts and rates of every section
