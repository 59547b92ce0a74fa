import pytest

from sunfish.config import (
    AttentionKind,
    ConfigError,
    ModelConfig,
    RunConfig,
    TimeCond,
    apply_tree,
    config_from_dict,
    load_preset,
    parse_overrides,
)


def test_precedence_defaults_preset_flags():
    assert RunConfig().model.d_model == 128
    micro = load_preset("micro")
    assert micro.model.d_model == 384 and micro.model.time_cond is TimeCond.LEARNED
    cfg = apply_tree(micro, parse_overrides(["--model.d_model=512", "--model.time_cond=adaln", "--train.compile=true"]))
    assert cfg.model.d_model == 512 and cfg.model.time_cond is TimeCond.ADALN and cfg.train.compile is True
    assert cfg.model.n_layers == 6  # untouched preset value


def test_saved_config_round_trips():
    cfg = load_preset("micro")
    assert config_from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "arg, message",
    [
        ("--model.nope=1", "unknown config key 'model.nope'"),
        ("--nope.d_model=1", "unknown config section 'nope'"),
        ("--model.d_model=1.5", "not a valid int"),
        ("--model.qk_norm=maybe", "not a valid bool"),
        ("--model.mlp=gelu", "one of swiglu, relu2"),
        ("model.d_model=3", "overrides look like"),
        ("--model.d_model", "overrides look like"),
    ],
)
def test_bad_overrides_are_one_sentence_errors(arg, message):
    with pytest.raises(ConfigError, match=message):
        apply_tree(RunConfig(), parse_overrides([arg]))


def test_enum_fields_accept_strings_in_code():
    assert ModelConfig(attention="causal").attention is AttentionKind.CAUSAL
    with pytest.raises(ValueError, match="not a valid AttentionKind"):
        ModelConfig(attention="sideways")


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset 'gigantic'"):
        load_preset("gigantic")
