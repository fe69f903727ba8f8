"""The TensorRT build's calls into TensorRT's Python API, with a recording stand-in for the module (TensorRT
cannot be installed on the machines this suite runs on; the real build is ``test_export_engines::test_tensorrt_engine``,
GPU-marked). What is checked is what this code decides: which graph, which network flags, which builder flags,
the batch profile, and the timing cache it keeps."""
from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

import landslide.export.tensorrt as trt_export


class _Config:
    def __init__(self, calls: list) -> None:
        self.calls = calls

    def set_flag(self, flag) -> None:
        self.calls.append(("set_flag", flag))

    def add_optimization_profile(self, prof) -> None:
        self.calls.append(("profile", prof.shapes))

    def create_timing_cache(self, data: bytes):
        self.calls.append(("timing_cache_in", data))
        return "cache"

    def set_timing_cache(self, cache, ignore_mismatch: bool) -> None:
        self.calls.append(("set_timing_cache", cache, ignore_mismatch))

    def get_timing_cache(self):
        return SimpleNamespace(serialize=lambda: b"timings")


def fake_trt(version: str, calls: list, typed_flag: bool = True) -> SimpleNamespace:
    network = SimpleNamespace(get_input=lambda i: SimpleNamespace(name="x", shape=(-1, 64, 64, 12)))

    class Builder:
        def __init__(self, logger) -> None:
            pass

        def create_network(self, flags: int):
            calls.append(("create_network", flags))
            return network

        def create_builder_config(self):
            return _Config(calls)

        def create_optimization_profile(self):
            prof = SimpleNamespace(shapes=None)
            prof.set_shape = lambda name, *shapes: setattr(prof, "shapes", (name, *shapes))
            return prof

        def build_serialized_network(self, net, config):
            return b"plan"

    class Parser:
        num_errors = 0

        def __init__(self, net, logger) -> None:
            pass

        def parse_from_file(self, path: str) -> bool:
            calls.append(("parse", Path(path).name))
            return True

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            pass

    # 11 has no BuilderFlag.FP16 (touching it raises AttributeError), and keeps STRONGLY_TYPED only as ignored.
    builder_flags = {} if version.startswith("11.") else {"FP16": "FP16"}
    flags = {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1} if typed_flag else {"EXPLICIT_BATCH": 0}
    return SimpleNamespace(__version__=version, Logger=Logger, Builder=Builder, OnnxParser=Parser,
                           BuilderFlag=SimpleNamespace(**builder_flags),
                           NetworkDefinitionCreationFlag=SimpleNamespace(**flags))


@pytest.mark.parametrize("version,typed_flag", [("10.13.0", True), ("11.2.0", True), ("11.9.0", False)])
def test_tensorrt_build_is_strongly_typed_from_the_fp16_graph(version, typed_flag, tmp_path, monkeypatch, caplog):
    """On 10.x and 11.x: the FP16 graph, the STRONGLY_TYPED network flag while TensorRT has it (required on 10,
    ignored on 11), and no precision flag (11 has none, and on 10 it would let TensorRT move the normalisation
    of raw values near 1e4 to FP16)."""
    monkeypatch.setattr(trt_export, "gpu_name", lambda: "Fake GPU")
    calls: list = []
    trt = fake_trt(version, calls, typed_flag)
    trt_export.check_version(trt.__version__)
    graph = trt_export.source_graph(tmp_path)
    assert graph.name == "fused_fp16.onnx"
    with caplog.at_level(logging.WARNING, logger="landslide.export.tensorrt"):
        plan = trt_export._build(trt, graph, tmp_path / "engines", (1, 8, 16))
    assert plan == b"plan"
    assert ("parse", graph.name) in calls
    assert ("create_network", 1 << 1 if typed_flag else 0) in calls
    assert [c for c in calls if c[0] == "set_flag"] == []
    assert caplog.text == ""
    # One profile on the batch axis, NHWC as the graph's input is.
    assert ("profile", ("x", (1, 64, 64, 12), (8, 64, 64, 12), (16, 64, 64, 12))) in calls
    # The timing cache starts empty, is written beside the engines, and is read back by the next build.
    assert ("timing_cache_in", b"") in calls
    (cache,) = (tmp_path / "engines").glob("timing-*.cache")
    assert cache.read_bytes() == b"timings"
    calls.clear()
    trt_export._build(trt, graph, tmp_path / "engines", (1, 8, 16))
    assert ("timing_cache_in", b"timings") in calls


@pytest.mark.parametrize("version", ["8.6.1", "9.3.0"])
def test_tensorrt_before_10_is_refused_on_import(version, monkeypatch):
    """8.x would build an implicit-batch network its ONNX parser refuses, and parses only up to opset 17: the
    refusal names the version and what to install, before any export work."""
    import sys

    from landslide.errors import ConfigError

    monkeypatch.setitem(sys.modules, "tensorrt", SimpleNamespace(__version__=version))
    with pytest.raises(ConfigError, match=f"TensorRT {version} is too old") as e:
        trt_export.import_trt()
    assert "tensorrt>=10" in e.value.fix
    monkeypatch.setitem(sys.modules, "tensorrt", SimpleNamespace(__version__="10.0.1"))
    assert trt_export.import_trt().__version__ == "10.0.1"
