"""The TensorRT build's calls into TensorRT's Python API, with a recording stand-in for the module (TensorRT
cannot be installed on the machines this suite runs on; the real build is ``test_export::test_tensorrt_engine``,
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


def fake_trt(typed: bool, calls: list) -> SimpleNamespace:
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

    flags = {"STRONGLY_TYPED": 1} if typed else {}  # TensorRT before 9 has no such member
    return SimpleNamespace(__version__="10.13.0" if typed else "8.6.1", Logger=Logger,
                           Builder=Builder, OnnxParser=Parser, BuilderFlag=SimpleNamespace(FP16="FP16"),
                           NetworkDefinitionCreationFlag=SimpleNamespace(**flags))


@pytest.mark.parametrize("typed", [True, False])
def test_tensorrt_build_is_strongly_typed_from_the_fp16_graph_where_it_can_be(typed, tmp_path, monkeypatch, caplog):
    """On 10.x and 11.x: the FP16 graph, the STRONGLY_TYPED network flag, no precision flag (11 has none, and
    on 10 it would let TensorRT move the normalisation of raw values near 1e4 to FP16). Only a TensorRT
    without strong typing gets the FP32 graph with BuilderFlag.FP16, and a warning saying so."""
    monkeypatch.setattr(trt_export, "gpu_name", lambda: "Fake GPU")
    calls: list = []
    trt = fake_trt(typed, calls)
    graph = trt_export.source_graph(tmp_path, trt)
    assert graph.name == ("fused_fp16.onnx" if typed else "fused.onnx")
    with caplog.at_level(logging.WARNING, logger="landslide.export.tensorrt"):
        plan = trt_export._build(trt, graph, tmp_path / "engines", (1, 8, 16))
    assert plan == b"plan"
    assert ("parse", graph.name) in calls
    assert ("create_network", 1 << 1 if typed else 0) in calls
    assert [c for c in calls if c[0] == "set_flag"] == ([] if typed else [("set_flag", "FP16")])
    assert ("BuilderFlag.FP16" in caplog.text) is not typed
    # One profile on the batch axis, NHWC as the graph's input is.
    assert ("profile", ("x", (1, 64, 64, 12), (8, 64, 64, 12), (16, 64, 64, 12))) in calls
    # The timing cache starts empty, is written beside the engines, and is read back by the next build.
    assert ("timing_cache_in", b"") in calls
    (cache,) = (tmp_path / "engines").glob("timing-*.cache")
    assert cache.read_bytes() == b"timings"
    calls.clear()
    trt_export._build(trt, graph, tmp_path / "engines", (1, 8, 16))
    assert ("timing_cache_in", b"timings") in calls
