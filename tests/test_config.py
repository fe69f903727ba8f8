import json

import pytest

from landslide.config import parse_config
from landslide.errors import ConfigError
from landslide.train_config import PRESETS, TrainConfig


def parse(argv):
    return parse_config(TrainConfig, argv, "t", presets=PRESETS)


def test_flags_mirror_fields():
    cfg = parse(["--data", "d", "--epochs", "3", "--archs", "a@224,b", "--no-deterministic", "--lr", "0.5"])
    assert cfg.data == "d" and cfg.epochs == 3 and cfg.archs == ["a@224", "b"] and cfg.lr == 0.5


def test_preset_then_config_file_then_flags(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"epochs": 9, "batch_size": 7}))
    cfg = parse(["--preset", "full", "--config", str(f), "--batch-size", "5"])
    assert cfg.archs == PRESETS["full"]["archs"]  # from preset
    assert cfg.epochs == 9                         # config file beats preset
    assert cfg.batch_size == 5                     # flag beats both
    assert cfg.preset == "full"


def test_full_preset_is_the_seed_recipe():
    cfg = parse(["--preset", "full"])
    assert cfg.archs == ["tf_efficientnetv2_l@224", "efficientnet_b5@384"]
    assert (cfg.folds, cfg.epochs, cfg.batch_size, cfg.lr, cfg.weight_decay, cfg.min_lr) == (5, 35, 16, 1e-4, 1e-5, 1e-6)
    assert (cfg.focal_alpha, cfg.focal_gamma, cfg.mixup_alpha, cfg.cutmix_alpha, cfg.patience) == (0.25, 2.0, 0.2, 1.0, 7)


def test_unknown_config_key_fails_naming_the_file(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"epoch": 3}))
    with pytest.raises(ConfigError, match="unknown config key") as e:
        parse(["--config", str(f)])
    assert str(f) in str(e.value) and "epochs" in str(e.value)  # the file, and the valid keys


def test_abbreviated_flags_are_refused_with_the_flag_meant(capsys):
    with pytest.raises(SystemExit) as e:  # argparse would otherwise take --epoch for --epochs
        parse(["--epoch", "3", "--bach-size=4", "--zzz", "--bat", "8"])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert "--epoch: did you mean --epochs?" in err and "--bach-size: did you mean --batch-size?" in err
    assert "--bat: did you mean --batch-size?" in err  # the flag it abbreviates, not the closer-spelled --data
    assert "--zzz:" not in err and "--help" in err  # nothing close: no guess, but where to look
    assert "usage:" not in err  # the one line that matters, not the whole usage


@pytest.mark.parametrize("value,want", [("on", True), ("true", True), ("1", True), ("off", False), ("No", False)])
def test_string_booleans_from_config_files_and_variants(value, want):
    from landslide.config import make_config

    assert make_config(TrainConfig, {"deterministic": value}).deterministic is want


def test_bad_booleans_are_refused_and_empty_list_items_dropped():
    from landslide.config import make_config

    for bad in ("", "maybe"):
        with pytest.raises(ConfigError, match="deterministic"):
            make_config(TrainConfig, {"deterministic": bad})
    assert make_config(TrainConfig, {"archs": "a,,b,"}).archs == ["a", "b"]


def test_base_replaces_the_defaults_and_typed_flags_win():
    base = {"data": "saved", "epochs": 9, "archs": ["a@224"], "lr": 0.5}
    cfg = parse_config(TrainConfig, ["--epochs", "2"], "t", presets=PRESETS, base=base)
    assert (cfg.data, cfg.epochs, cfg.archs, cfg.lr) == ("saved", 2, ["a@224"], 0.5)
    assert parse_config(TrainConfig, [], "t", base=base).batch_size == TrainConfig().batch_size


def test_help_keeps_the_usage_examples_one_per_line(capsys):
    with pytest.raises(SystemExit):
        parse_config(TrainConfig, ["--help"], "Train.\n\n    python train.py --a\n    python train.py --b\n")
    out = capsys.readouterr().out
    assert "    python train.py --a\n    python train.py --b\n" in out


def test_help_shows_each_default_once_as_it_is_typed():
    import re

    from landslide.config import build_parser

    helps = {a.dest: " ".join(a.help.split()) for a in build_parser(TrainConfig, "t", PRESETS)._actions if a.help}
    assert helps["archs"].endswith("(default: test_efficientnet)")  # as --archs takes it, not a Python list
    assert helps["epochs"].endswith("(default: 35)")
    assert helps["only_folds"].count("default") == 1 and helps["cache_dir"].count("default") == 1  # said in the help
    assert "default" not in helps["data"] and "default" not in helps["pretrained"]  # empty: nothing to show
    assert not [d for d, h in helps.items() if re.search(r"\(default: (\)|\[)", h)]


def test_bad_type_fails(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"epochs": "many"}))
    with pytest.raises(ConfigError, match="epochs"):
        parse(["--config", str(f)])


@pytest.mark.parametrize("key,value,fix", [("epochs", 2.5, '"epochs": an int value, e.g. 35'),
                                           ("epochs", True, '"epochs": an int value'),
                                           ("lr", False, '"lr": a float value, e.g. 0.0001'),
                                           ("deterministic", 5, '"deterministic": a bool value, e.g. false'),
                                           ("only_folds", 1, '"only_folds": a list value'),
                                           ("only_folds", [0.5], '"only_folds": a list value'),
                                           ("out", ["a"], '"out": a str value, e.g. "runs/train"')])
def test_config_file_values_are_not_bent_to_the_type(tmp_path, key, value, fix):
    """JSON 2.5 for an int field was read as 2, true as 1, 5 for a bool as true: now refused, naming key and file."""
    f = tmp_path / "c.json"
    f.write_text(json.dumps({key: value}))
    with pytest.raises(ConfigError, match=f"key '{key}'") as e:
        parse(["--config", str(f)])
    assert e.value.file == str(f) and e.value.fix.startswith(f"write {fix}")


def test_config_file_values_of_the_right_type_load(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"epochs": 3.0, "lr": 1, "deterministic": True, "only_folds": [1], "archs": "a,b"}))
    cfg = parse(["--config", str(f)])
    assert (cfg.epochs, cfg.lr, cfg.deterministic, cfg.only_folds, cfg.archs) == (3, 1.0, True, [1], ["a", "b"])


def test_unknown_flag_exits():
    with pytest.raises(SystemExit):
        parse(["--no-such-flag", "1"])


def _script_configs():
    from bench.ablate import AblateConfig
    from bench.data import DataBenchConfig
    from bench.infer import InferBenchConfig
    from bench.train import TrainBenchConfig
    from landslide.export import ExportConfig
    from landslide.infer import InferConfig

    return [(TrainConfig, ()), (InferConfig, ("run",)), (ExportConfig, ("run",)), (DataBenchConfig, ()),
            (InferBenchConfig, ()), (TrainBenchConfig, ()), (AblateConfig, ())]


@pytest.mark.parametrize("cls,positional", _script_configs(), ids=lambda v: getattr(v, "__name__", ""))
def test_every_field_is_a_flag_that_round_trips(cls, positional):
    """One flag per field, for every script: each field's value, typed as a flag, comes back as that value
    (the default's opposite for booleans, so the flag is not silently ignored)."""
    import dataclasses
    import typing

    from landslide.config import make_config

    for f in dataclasses.fields(cls):
        if f.name == "preset" or f.name in positional:
            continue
        default = getattr(make_config(cls, {}), f.name)
        flag = "--" + f.name.replace("_", "-")
        if isinstance(default, bool):
            argv, want = [flag if not default else f"--no-{flag[2:]}"], not default
        elif isinstance(default, list):  # an empty default gets one element of the list's type
            elem = typing.get_args(typing.get_type_hints(cls)[f.name])[0]
            want = default or [elem(1)]
            argv = [flag, ",".join(map(str, want))]
        elif default is None:  # an optional field (X | None): a value of X, since None is the flag left out
            inner = next(a for a in typing.get_args(typing.get_type_hints(cls)[f.name]) if a is not type(None))
            argv, want = [flag, str(inner(1))], inner(1)
        else:
            argv, want = [flag, str(default)], default
        got = getattr(parse_config(cls, argv, "t", positional=positional), f.name)
        assert got == want, (cls.__name__, f.name, argv, got)
