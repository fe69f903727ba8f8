"""Every command the docs show parses with the script's real parser: a renamed or removed flag, or a value
outside a flag's choices, fails here instead of in a user's first paste."""
from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from landslide.config import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "bench/README.md", "engines/README.md",
        "train.py", "infer.py", "export.py", "bench/data.py", "bench/train.py", "bench/infer.py", "bench/ablate.py")
# python train.py ..., .venv/bin/python -m bench.data ..., torchrun --nproc_per_node 8 train.py ...; up to the
# end of the line, a closing backtick, a comment or a following command.
COMMAND = re.compile(r"(?:python3?|\.venv/bin/python|torchrun --nproc_per_node \d+) "
                     r"(train\.py|infer\.py|export\.py|-m bench\.(?:data|train|infer|ablate)|-m landslide\.(?:demo|synth))"
                     r"((?:[^\n`#&)]|&(?!&))*)")
MAKE = re.compile(r"(?:`|^ {4,})make ([a-z][a-z-]*)", re.M)  # in code, not prose ("make it")


def parser(script: str) -> argparse.ArgumentParser:
    if script == "train.py":
        from landslide.train_config import PRESETS, TrainConfig

        return build_parser(TrainConfig, "", PRESETS)
    if script in ("infer.py", "export.py"):
        from landslide.export import ExportConfig
        from landslide.infer import InferConfig

        return build_parser(InferConfig if script == "infer.py" else ExportConfig, "", positional=("run",))
    if script in ("-m landslide.demo", "-m landslide.synth"):
        from landslide import demo, synth

        return (demo if script == "-m landslide.demo" else synth).build_parser()
    import bench.ablate
    import bench.data
    import bench.infer
    import bench.train

    cls = {"-m bench.data": bench.data.DataBenchConfig, "-m bench.train": bench.train.TrainBenchConfig,
           "-m bench.infer": bench.infer.InferBenchConfig, "-m bench.ablate": bench.ablate.AblateConfig}[script]
    return build_parser(cls, "")


def arguments(rest: str) -> list[str]:
    """The documented tail as argv: optional parts ``[--flag X]`` included, the first of ``a|b`` taken,
    ``...`` dropped."""
    words = rest.replace("[", " ").replace("]", " ").split()
    return [w.split("|")[0] for w in words if w != "..." and w != "\\"]


def documented_commands() -> list[tuple[str, str, list[str]]]:
    found = []
    for doc in DOCS:
        for m in COMMAND.finditer((ROOT / doc).read_text()):
            found.append((doc, m.group(1), arguments(m.group(2))))
    return found


def test_the_docs_show_commands_for_every_script():
    scripts = {script for _, script, _ in documented_commands()}
    assert scripts == {"train.py", "infer.py", "export.py", "-m bench.data", "-m bench.train", "-m bench.infer",
                       "-m bench.ablate", "-m landslide.synth"}


def test_documented_make_targets_exist():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, re.M))
    named = {t for doc in DOCS for t in MAKE.findall((ROOT / doc).read_text())}
    assert {"demo", "test"} <= named and named <= targets, named - targets


@pytest.mark.parametrize("doc", DOCS)
def test_documented_commands_parse(doc):
    failures = []
    for where, script, argv in documented_commands():
        if where != doc:
            continue
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                parser(script).parse_args(argv)
        except SystemExit as e:
            if e.code != 0:  # 0: --help, printed and exited
                said = [ln for ln in err.getvalue().splitlines() if "error:" in ln] or err.getvalue().splitlines()[-1:]
                failures.append(f"{script} {' '.join(argv)}: {said[0]}")
    assert not failures, "\n".join(failures)


def test_a_wrong_flag_in_a_documented_command_is_caught():
    """The check itself: a flag the parser does not have, or a value outside its choices, is a failure."""
    for argv in (["runs/x", "--bakend", "torch"], ["runs/x", "--backend", "onnx"]):
        with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()):
            parser("infer.py").parse_args(argv)
    assert arguments(" RUN_DIR --data DIR [--backend auto|torch] ...") == ["RUN_DIR", "--data", "DIR", "--backend", "auto"]


def test_help_lists_each_preset_as_flags_that_give_that_preset():
    """train.py --help spells every preset out as flags; typed, those flags build the same config."""
    import dataclasses

    from landslide.config import parse_config
    from landslide.train_config import PRESETS, TrainConfig

    presets = {**PRESETS, "flags": {"deterministic": True, "resume": False, "archs": ["a", "b@96"], "lr": 0.5}}
    epilog = build_parser(TrainConfig, "", presets).epilog
    blocks = re.split(r"\n  (?=\w+: )", epilog)[1:]
    assert [b.split(":")[0] for b in blocks] == list(presets)
    for block in blocks:
        name, flags = block.split(": ", 1)
        preset = parse_config(TrainConfig, ["--preset", name], "", presets=presets)
        typed = parse_config(TrainConfig, shlex.split(flags), "", presets=presets)  # as_flag quotes values
        assert typed != TrainConfig() and dataclasses.replace(preset, preset=typed.preset) == typed, name


def test_a_module_run_with_dash_m_is_named_so_in_its_usage():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "bench.infer", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("usage: python -m bench.infer "), r.stdout[:200]
