"""A re-export that fails verification, or is interrupted, keeps the previous export: graphs and
packages are built and checked beside their target and swapped in only once proven (export/staging.py)."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from landslide.errors import ContractError, VerificationError
from landslide.export import onnx as ox
from landslide.export.sidecar import read_sidecar, sidecar_path

from export_helpers import old_export, unchanged

EXPORTS = {"fused.onnx": lambda f, i, x, r, out: ox.export_fused(f, i, x, r, out / "fused.onnx", "x"),
           "fused_fp16.onnx": lambda f, i, x, r, out: ox.export_fp16(f, i, x, r, out / "fused_fp16.onnx", "x"),
           "fold0_test_efficientnet_80.onnx": lambda f, i, x, r, out: ox.export_folds(f, i, x, out, "x")}


@pytest.mark.parametrize("name", list(EXPORTS))
def test_a_re_export_that_fails_verification_keeps_the_previous_export(exported, reference, tmp_path, monkeypatch,
                                                                        name):
    """The new graph is built and checked beside the old one: when ONNX Runtime's answers are off, the old
    graph and sidecar stay byte-identical and loadable, and no temp file is left."""
    run, _ = exported
    fused, info, x, ref = reference
    path, before = old_export(run, tmp_path, name)
    real = ox.ort_run
    monkeypatch.setattr(ox, "ort_run", lambda p, a, batch_size=64, provider="CPUExecutionProvider":
                        real(p, a, batch_size) + 0.05)  # past every tolerance, FP16's 1e-2 too
    with pytest.raises(VerificationError, match="FAILED") as e:
        EXPORTS[name](fused, info, x[:8], ref[:8], path.parent)
    assert str(path) in str(e.value)  # the target is named, not the temp folder that has gone
    monkeypatch.setattr(ox, "ort_run", real)
    unchanged(path, before)


def test_a_failing_checker_keeps_the_previous_export(exported, reference, tmp_path, monkeypatch):
    import onnx

    run, _ = exported
    fused, info, x, ref = reference
    path, before = old_export(run, tmp_path, "fused.onnx")

    def broken(*a, **k):
        raise onnx.checker.ValidationError("a node the checker refuses")

    monkeypatch.setattr(onnx.checker, "check_model", broken)
    with pytest.raises(onnx.checker.ValidationError):
        ox.export_fused(fused, info, x[:8], ref[:8], path, "x")
    monkeypatch.undo()
    unchanged(path, before)


def test_an_interrupted_re_export_keeps_the_previous_export(exported, reference, tmp_path, monkeypatch):
    """Ctrl-C once the new graph is written and verified, before it is swapped in: the old pair stays whole.
    A crash between the renames (graph swapped, sidecar not yet) is refused by the sidecar's hash, not scored."""
    from landslide.export import staging

    run, _ = exported
    fused, info, x, ref = reference
    path, before = old_export(run, tmp_path, "fused.onnx")
    fused = copy.deepcopy(fused)  # nudged (by far less than the tolerance) so the new graph's bytes differ
    with torch.no_grad():
        fused.archs[0][0].model.head[1].bias.add_(1e-6)

    def ctrl_c(p, **k):
        assert p.name == "fused.onnx" and p.parent != path.parent and p.stat().st_size > 0  # written, not in place
        raise KeyboardInterrupt

    monkeypatch.setattr(ox, "write_sidecar", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        ox.export_fused(fused, info, x[:8], ref[:8], path, "x")
    monkeypatch.undo()
    unchanged(path, before)

    # Between the graph's rename and the sidecar's: the old sidecar does not describe the new graph.
    replaced, real = [], staging.os.replace

    def crash_on_second(src, dst):  # os.replace is os's: renames inside the stage (the sidecar's) pass
        if Path(dst).parent == path.parent:
            if replaced:
                raise KeyboardInterrupt
            replaced.append(Path(dst).name)
        real(src, dst)

    monkeypatch.setattr(staging.os, "replace", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        ox.export_fused(fused, info, x[:8], ref[:8], path, "x")
    monkeypatch.undo()
    assert replaced == ["fused.onnx"] and sorted(p.name for p in path.parent.iterdir()) == sorted(before)
    assert path.read_bytes() != before["fused.onnx"] and sidecar_path(path).read_bytes() == before["fused.onnx.json"]
    with pytest.raises(ContractError, match="sha256"):
        read_sidecar(path)

    # Uninterrupted, the new pair replaces the old one and loads.
    ox.export_fused(fused, info, x[:8], ref[:8], path, "x")
    assert sorted(p.name for p in path.parent.iterdir()) == sorted(before)
    assert read_sidecar(path)["source_hash"] == "x"
    np.testing.assert_allclose(ox.ort_run(path, x[:8]), ref[:8], atol=1e-5)


def test_a_failed_aoti_rebuild_keeps_the_previous_package(reference, tmp_path, monkeypatch):
    """The package is compiled and checked beside the cached one, which stays until the new one verifies.
    (Compilation is faked: test_export_engines.py builds real packages.)"""
    from landslide.export import aoti
    from landslide.export.sidecar import write_sidecar

    fused, info, x, ref = reference
    engines = tmp_path / "engines"
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    path = engines / f"fused-{aoti.stable_hash(aoti.package_key('x', device, (1, 2, 4)))}.pt2"
    engines.mkdir()
    path.write_bytes(b"old package")
    write_sidecar(path, kind="aoti", info=info, precision="fp32", run_sha="x")
    before = {p.name: p.read_bytes() for p in engines.iterdir()}

    def compile_(ep, package_path):
        Path(package_path).write_bytes(b"new package")
        return package_path

    def bad(path, package, *a, **k):
        raise VerificationError("verify: FAILED", file=path)

    monkeypatch.setattr(torch.export, "export", lambda *a, **k: None)
    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", compile_)
    monkeypatch.setattr(aoti, "_verify", bad)
    with pytest.raises(VerificationError):
        aoti.build_package(copy.deepcopy(fused), info, "x", engines, (1, 2, 4), x[:4], ref[:4], rebuild=True)
    assert {p.name: p.read_bytes() for p in engines.iterdir()} == before
    monkeypatch.setattr(aoti, "_verify", lambda *a, **k: None)
    assert aoti.build_package(copy.deepcopy(fused), info, "x", engines, (1, 2, 4), x[:4], ref[:4],
                              rebuild=True) == path
    assert path.read_bytes() == b"new package" and read_sidecar(path, kind="aoti")["profile"] == [1, 2, 4]
    assert sorted(p.name for p in engines.iterdir()) == sorted(before)
