"""Export: per-fold and fused ONNX round-trips, FP16 parity, verification failure, sidecar refusals (AOTI and
TensorRT: test_export_engines.py)."""
from __future__ import annotations

import copy
import json
import shutil
import warnings

import numpy as np
import pytest
import torch

from landslide.config import make_config
from landslide.contract import file_sha256
from landslide.errors import ConfigError, ContractError, VerificationError
from landslide.export import ExportConfig
from landslide.export import onnx as ox
from landslide.export.sidecar import read_sidecar, sidecar_path
from landslide.infer import InferConfig, make_runner

from export_helpers import copy_artefact, export_script, linear_graph


def test_every_artefact_has_a_checked_sidecar(exported):
    run, _ = exported
    files = sorted((run / "export").glob("*.onnx"))
    assert [f.name for f in files] == ["fold0_test_efficientnet_80.onnx", "fold1_test_efficientnet_80.onnx",
                                       "fused.onnx", "fused_fp16.onnx"]
    for f in files:
        side = read_sidecar(f)
        assert side["sha256"] == file_sha256(f)
        assert side["contract"]["bands"] == json.loads((run / "contract.json").read_text())["bands"]
        thr = json.loads((run / "calibration.json").read_text())["threshold"]
        if f.name.startswith("fold"):  # a logit of one fold: the calibrated threshold is the ensemble's, said so
            assert side["threshold"] is None and side["ensemble_threshold"] == thr and "fused.onnx" in side["note"]
        else:
            assert side["threshold"] == thr
        assert side["archs"] == ["test_efficientnet@80"] and side["folds"] == [0, 1]
        assert len(side["source_hash"]) == 16 and "onnxruntime" in side["versions"]
    assert read_sidecar(run / "export" / "fused_fp16.onnx")["precision"] == "fp16"
    fold1 = read_sidecar(run / "export" / "fold1_test_efficientnet_80.onnx")
    assert (fold1["fold"], fold1["arch"]) == (1, "test_efficientnet@80")  # the real arch name, not the file stem


def test_a_per_fold_graph_given_to_infer_points_at_the_fused_one(exported):
    run, _ = exported
    fold0 = run / "export" / "fold0_test_efficientnet_80.onnx"
    with pytest.raises(ContractError, match="one fold's graph") as e:
        make_runner(InferConfig(run=str(fold0)))
    assert e.value.fix == f"pass {run / 'export' / 'fused.onnx'} (or the run folder) instead"


def test_per_fold_onnx_round_trip(exported, reference):
    run, _ = exported
    fused, info, x, _ = reference
    xp = fused.preprocess(torch.from_numpy(x)).contiguous().numpy()
    for k, net in zip(info.folds, fused.archs[0]):
        ref = ox.torch_run(net, xp)
        got = ox.ort_run(run / "export" / f"fold{k}_test_efficientnet_80.onnx", xp)
        assert got.shape == ref.shape == (len(x),)
        assert np.abs(got - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())


def test_fused_onnx_matches_torch_ensemble(exported, reference):
    from landslide.runtime.onnxruntime import OnnxRunner

    run, _ = exported
    _, info, x, ref = reference
    runner = OnnxRunner(run / "export" / "fused.onnx", "cpu")
    got = np.concatenate([runner.predict(x[:5]), runner.predict(x[5:])])  # two batch sizes: dynamic axis
    assert np.abs(got - ref).max() <= 1e-5
    assert runner.threshold == info.threshold


def test_fused_graphs_merge_the_filtered_sar_bands_with_a_gather(exported):
    """No ScatterElements in either fused graph: index_copy exported as one, with indices broadcast through
    Shape/Expand, a shape computation TensorRT may refuse; the merge is one Gather from cat([x, sar])."""
    import onnx

    run, _ = exported
    for name in ("fused.onnx", "fused_fp16.onnx"):
        ops = {n.op_type for n in onnx.load(str(run / "export" / name), load_external_data=False).graph.node}
        assert "ScatterElements" not in ops and "ScatterND" not in ops and "Gather" in ops, name


def test_fp16_graph_parity(exported, reference):
    import onnx

    from landslide.runtime.onnxruntime import OnnxRunner

    run, _ = exported
    _, info, x, ref = reference
    path = run / "export" / "fused_fp16.onnx"
    model = onnx.load(str(path))
    f16 = onnx.TensorProto.FLOAT16
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert sum(t.data_type == f16 for t in model.graph.initializer) > 10  # the models really are FP16
    # Normalisation, and everything before it (the SAR median filter, the views), runs in FP32: raw optical
    # values near 1e4 have FP16 steps of 8. Walk back from each normalisation's Sub to the graph input: no
    # Cast to FP16 on the way, and the Sub's operands are FP32.
    inferred = onnx.shape_inference.infer_shapes(model)
    elem = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.input]}
    elem |= {t.name: t.data_type for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    subs = [n for n in model.graph.node if n.op_type == "Sub" and any(i.endswith("normalize.mean") for i in n.input)]
    assert len(subs) == len(info.folds) * len(info.archs)
    for sub in subs:
        assert {elem[i] for i in sub.input} == {onnx.TensorProto.FLOAT}
        todo, seen = [sub.input[0]], set()
        while todo:
            node = producer.get(todo.pop())
            if node is None or node.name in seen:
                continue
            seen.add(node.name)
            to = next((a.i for a in node.attribute if a.name == "to"), None)
            assert not (node.op_type == "Cast" and to == f16), f"{node.name} casts to FP16 before normalisation"
            todo += list(node.input)
    got = OnnxRunner(path, "cpu").predict(x)
    assert np.abs(got - ref).max() <= 1e-2
    assert ((got >= info.threshold) == (ref >= info.threshold)).mean() >= 0.995


def test_fp16_graph_parity_on_a_confident_ensemble(exported, reference, tmp_path):
    """The tiny run's probabilities sit within 0.006 of each other, so a near-constant graph would pass the
    check above. Here each fold's head is rescaled so its logits span about +-4 around the calibrated
    threshold: the FP16 graph must still hold 1e-2 and the decisions, which now fall on both sides."""
    from landslide.model import tta_views

    fused, info, x, _ = reference
    confident = copy.deepcopy(fused)
    with torch.no_grad():
        z = tta_views(confident.preprocess(torch.from_numpy(x)))
        for row in confident.archs:
            for net in row:
                head = net.model.head[1]
                logit = net(z).float()
                c, scale = logit.median(), 4.0 / (logit - logit.median()).abs().max()
                head.weight.mul_(scale)
                head.bias.copy_((head.bias - c) * scale + float(np.log(info.threshold / (1 - info.threshold))))
    ref = ox.torch_run(confident, x)
    decided = ref >= info.threshold
    assert 0.2 < decided.mean() < 0.8 and ref.max() - ref.min() > 0.5  # a check that can fail
    path = ox.export_fp16(confident, info, x, ref, tmp_path / "fused_fp16.onnx", "x")  # verifies itself, too
    got = ox.ort_run(path, x)
    assert np.abs(got - ref).max() <= 1e-2 and ((got >= info.threshold) == decided).mean() >= 0.995


def test_verification_refuses_past_tolerance(exported, reference, tmp_path, monkeypatch):
    fused, info, x, ref = reference
    with pytest.raises(VerificationError, match="FAILED"):
        ox.require(ox.compare("x", ref + 2e-5, ref, info.threshold, ox.FP32_TOL), tmp_path / "x.onnx")
    # A broken exporter (here: ORT answers shifted by 1e-3) makes the export fail, without a sidecar.
    real = ox.ort_run
    monkeypatch.setattr(ox, "ort_run", lambda p, a, batch_size=64: real(p, a, batch_size) + 1e-3)
    with pytest.raises(VerificationError):
        ox.export_fused(fused, info, x[:8], ref[:8], tmp_path / "fused.onnx", "x")
    assert list(tmp_path.iterdir()) == []  # no graph, no sidecar, no temp folder


def test_fp16_graph_is_also_checked_on_the_cuda_ep_where_there_is_one(exported, reference, tmp_path, monkeypatch):
    """ORT's CPU EP computes FP16 convolutions in FP32, so where the CUDA EP runs the FP16 graph is
    checked there too: an FP16-arithmetic error there fails the export, and a CUDA EP that does not
    start is an error, not a silent second CPU check."""
    run, _ = exported
    fused, info, x, ref = reference
    calls, real = [], ox.ort_run

    def gpu_off_by_005(p, a, batch_size=64, provider="CPUExecutionProvider"):
        calls.append(provider)
        return real(p, a, batch_size) + (0.05 if provider == "CUDAExecutionProvider" else 0.0)

    monkeypatch.setattr(ox, "gpu_check_provider", lambda: True)
    monkeypatch.setattr(ox, "ort_run", gpu_off_by_005)
    with pytest.raises(VerificationError, match="CUDA EP"):
        ox.export_fp16(fused, info, x[:8], ref[:8], tmp_path / "fused_fp16.onnx", "x")
    assert calls == ["CPUExecutionProvider", "CUDAExecutionProvider"]
    monkeypatch.setattr(ox, "ort_run", real)
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(VerificationError, match="CUDAExecutionProvider did not start"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ORT's own "not in available provider names"
            ox.ort_run(run / "export" / "fused_fp16.onnx", x[:2], provider="CUDAExecutionProvider")


def test_tampered_artefact_refused(exported, tmp_path):
    from landslide.runtime.onnxruntime import OnnxRunner

    run, _ = exported
    path = copy_artefact(run / "export" / "fused.onnx", tmp_path)
    with open(path, "r+b") as f:  # flip one byte near the end (inside the weights)
        f.seek(-100, 2)
        b = f.read(1)
        f.seek(-100, 2)
        f.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(ContractError, match="sha256") as e:
        OnnxRunner(path, "cpu")
    # The fix is the real command: the run the sidecar names, and --out since the graph is not in RUN/export.
    assert str(path) in str(e.value) and "RUN_DIR" not in str(e.value)
    assert str(e.value).endswith(f"Fix: rebuild it: python export.py {run.resolve()} --out {tmp_path}")
    sidecar_path(path).unlink()
    with pytest.raises(ContractError, match="sidecar missing") as e:
        OnnxRunner(path, "cpu")
    # Nothing left names the run: the placeholder says what it stands for.
    assert str(e.value).endswith(f"python export.py RUN_DIR --out {tmp_path} (RUN_DIR: the run folder it was exported from)")


def test_tampered_graph_in_a_copied_run_names_the_copy(exported, tmp_path):
    from landslide.config import make_config
    from landslide.infer import InferConfig, make_runner

    run, _ = exported
    copy = tmp_path / "run copy"  # a space: the command is quoted for the shell
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("*.pt2*", "submission*"))
    graph = copy / "export" / "fused.onnx"
    graph.write_bytes(graph.read_bytes()[:-1] + bytes([graph.read_bytes()[-1] ^ 0xFF]))
    with pytest.raises(ContractError, match="sha256") as e:
        make_runner(make_config(InferConfig, {"run": str(copy), "backend": "onnxruntime"}))
    assert str(e.value).endswith(f"Fix: rebuild it: python export.py '{copy}'")  # the copy, not the original


def test_rebuild_command_for_an_engine_forces_the_rebuild(exported, tmp_path):
    from landslide.export.sidecar import rebuild_command

    run, _ = exported
    pkg = tmp_path / "fused-0.pt2"
    assert rebuild_command(pkg, {"source_run": str(run), "profile": [8, 8, 16]}) == (
        f"python export.py {run} --engine aoti --engine-dir {tmp_path} --min-batch 8 --opt-batch 8 --max-batch 16 "
        "--rebuild")
    assert rebuild_command(tmp_path / "fused-0.engine", {"source_run": str(run), "profile": [1, 64, 256]}) == (
        f"python export.py {run} --engine tensorrt --engine-dir {tmp_path} --rebuild")
    assert {"rebuild", "engine_dir", "min_batch", "out"} <= set(ExportConfig.__dataclass_fields__)  # real flags


def test_wrong_bands_refused(exported, tmp_path):
    from landslide.config import make_config
    from landslide.infer import InferConfig, main

    run, data = exported
    other = tmp_path / "d"
    shutil.copytree(data, other)
    (other / "bands.txt").write_text("\n".join(["red", "green", "blue", "nir"]) + "\n")
    with pytest.raises(ContractError, match="bands") as e:
        main(make_config(InferConfig, {"run": str(run / "export" / "fused.onnx"), "data": str(other)}))
    assert "bands.txt" in str(e.value)


def test_stale_preprocess_version_refused(exported, tmp_path):
    run, _ = exported
    path = copy_artefact(run / "export" / "fused.onnx", tmp_path)
    side = json.loads(sidecar_path(path).read_text())
    side["contract"]["preprocess_version"] = 0
    sidecar_path(path).write_text(json.dumps(side))
    with pytest.raises(ContractError, match="preprocessing v0"):
        read_sidecar(path)


def test_a_run_trained_with_other_preprocessing_is_refused_by_export_and_inference(exported, tmp_path):
    """Its weights were fitted to the other preprocessing: exporting it must not relabel it as current."""
    from landslide.config import make_config
    from landslide.ensemble import read_run
    from landslide.export import main as export_main
    from landslide.runtime.torch import TorchRunner

    run, _ = exported
    stale = tmp_path / "stale"
    shutil.copytree(run, stale, ignore=shutil.ignore_patterns("export"))
    contract = json.loads((stale / "contract.json").read_text())
    (stale / "contract.json").write_text(json.dumps({**contract, "preprocess_version": 0}))
    for make in (lambda: read_run(stale), lambda: TorchRunner(stale),
                 lambda: export_main(make_config(ExportConfig, {"run": str(stale), "engine": "none"}))):
        with pytest.raises(ContractError, match="trained with preprocessing v0") as e:
            make()
        assert "re-train" in str(e.value) and "contract.json" in str(e.value)
    assert not (stale / "export").exists()


def test_engine_scan_skips_a_broken_sidecar(exported, tmp_path):
    """One unreadable sidecar in a shared engine folder must not stop the package built from this run
    being found (nor raise a JSON traceback)."""
    from landslide.ensemble import read_run
    from landslide.export.sidecar import run_hash
    from landslide.infer import find_engine

    run, _ = exported
    engines = tmp_path / "engines"
    engines.mkdir()
    here = "cuda" if torch.cuda.is_available() else "cpu"
    good = {"source_run": str(run.resolve()), "source_hash": run_hash(read_run(run)), "device": here,
            "device_name": torch.cuda.get_device_name() if here == "cuda" else "cpu",
            "versions": {"torch": torch.__version__}}
    for name, side in (("broken", '{"source_run": '), ("list", "[1, 2]"), ("good", json.dumps(good))):
        (engines / f"{name}.pt2").write_bytes(b"package")
        sidecar_path(engines / f"{name}.pt2").write_text(side)
    assert find_engine(run, engines, "aoti") == (engines / "good.pt2", [])
    (engines / "good.pt2").unlink()
    assert find_engine(run, engines, "aoti") == (None, [])


def test_engine_scan_skips_engines_that_cannot_run_here(exported, tmp_path, caplog):
    """Packages built from this run by another torch, or for the other device, are passed over with the
    reason (the runner's own check), so a shared engine folder or a torch upgrade does not pick a file
    that then refuses to load while a fitting one sits beside it; with none fitting, --backend aoti names
    each reason and the rebuild command."""
    from landslide.ensemble import read_run
    from landslide.export.sidecar import run_hash
    from landslide.infer import find_engine

    run, _ = exported
    engines = tmp_path / "engines"
    engines.mkdir()
    base = {"source_run": str(run.resolve()), "source_hash": run_hash(read_run(run)), "device": "cpu",
            "device_name": "cpu", "versions": {"torch": torch.__version__}}
    sides = {"old": {**base, "versions": {"torch": "2.0.0"}}, "gpu": {**base, "device": "cuda", "device_name": "H200"},
             "fits": base}
    for name, side in sides.items():
        (engines / f"{name}.pt2").write_bytes(b"package")
        sidecar_path(engines / f"{name}.pt2").write_text(json.dumps(side))
    found, unfit = find_engine(run, engines, "aoti", device="cpu")
    assert found == engines / "fits.pt2"
    assert sorted(unfit) == ["gpu.pt2: package compiled for cuda, serving on cpu",
                             f"old.pt2: package compiled with torch 2.0.0, this is torch {torch.__version__}"]
    (engines / "fits.pt2").unlink()
    with pytest.raises(ConfigError, match="no aoti engine built from this run") as e:
        make_runner(make_config(InferConfig, {"run": str(run), "backend": "aoti", "device": "cpu",
                                              "engine_dir": str(engines)}))
    assert "torch 2.0.0" in str(e.value) and "serving on cpu" in str(e.value)
    assert e.value.fix == f"python export.py {run} --engine aoti --engine-dir {engines}"


def test_oversized_graph_weights_are_gathered_into_one_hashed_file(reference, tmp_path):
    # Past 2 GB the exporter writes one file per weight; the export keeps one <graph>.data instead (swapped
    # in with the graph), and the sidecar refuses a graph whose weights file changed or went missing.
    from landslide.export.sidecar import write_sidecar
    from landslide.export.staging import staged

    _, info, _, _ = reference
    graph = tmp_path / "g.onnx"
    with staged(graph) as p:
        want = linear_graph(p, per_weight_files=True)
        assert {f.name for f in p.parent.iterdir()} == {"g.onnx", "W", "b"}
        ox.gather_weights(p)
        assert {f.name for f in p.parent.iterdir()} == {"g.onnx", "g.onnx.data"}
        side = write_sidecar(p, kind="onnx-fused", info=info, precision="fp32", run_sha="x")
    assert {f.name for f in tmp_path.iterdir()} == {"g.onnx", "g.onnx.data", "g.onnx.json"}
    np.testing.assert_allclose(ox.ort_run(graph, np.ones((2, 256), np.float32)), want, rtol=1e-6)
    assert side["data_sha256"] == file_sha256(ox.weights_path(graph))
    read_sidecar(graph)
    ox.weights_path(graph).write_bytes(ox.weights_path(graph).read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ContractError, match="weights file") as e:
        read_sidecar(graph)
    assert "g.onnx.data" in str(e.value)

    # Re-exported small: its weights are embedded again, and the stale .data file goes once it is in place.
    with staged(graph) as p:
        linear_graph(p, per_weight_files=False)
        ox.gather_weights(p)
        write_sidecar(p, kind="onnx-fused", info=info, precision="fp32", run_sha="x")
    assert {f.name for f in tmp_path.iterdir()} == {"g.onnx", "g.onnx.json"}
    read_sidecar(graph)


@pytest.mark.parametrize("flags, message", [
    (["--n-verify", "0"], "--n-verify 0: every artefact is checked on at least one patch. Fix: pass --n-verify 1"),
    (["--n-verify", "-5"], "--n-verify -5: every artefact is checked on at least one patch"),
    (["--min-batch", "0"], "batch profile 0/64/256 is not ordered. Fix: use --min-batch <= --opt-batch"),
    (["--opt-batch", "512"], "batch profile 1/512/256 is not ordered"),
    (["--out", "{file}"], "--out {file} is a file; it takes a folder"),
    (["--engine-dir", "{file}"], "--engine-dir {file} is a file; it takes a folder")])
def test_bad_export_flags_exit_2_before_anything_is_written(exported, tmp_path, capsys, monkeypatch, flags,
                                                            message):
    run, _ = exported
    file = tmp_path / "a file"
    file.write_text("")
    flags = [f.format(file=file) for f in flags]
    assert export_script(monkeypatch, str(run), "--out", str(tmp_path / "x"), *flags) == 2
    err = capsys.readouterr().err
    assert message.format(file=file) in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a file"]


def test_a_file_passed_as_the_run_folder_is_named_as_a_file(exported, capsys, monkeypatch):
    run, _ = exported
    graph = run / "export" / "fused.onnx"
    assert export_script(monkeypatch, str(graph)) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"error: {graph} is a file; export.py takes a run folder (the one train.py --out wrote). "
                        f"Fix: python export.py {run}")
    assert "not found" not in err


def test_one_verification_patch_is_enough(reference, tmp_path):
    """--n-verify 1, the smallest accepted: the graph is traced on a batch of 1 and still takes any batch."""
    fused, info, x, ref = reference
    path = ox.export_fused(fused, info, x[:1], ref[:1], tmp_path / "fused.onnx", "x")
    np.testing.assert_allclose(ox.ort_run(path, x[:5]), ref[:5], atol=1e-5)


def test_parity_needs_both_the_tolerance_and_the_decision_agreement():
    assert ox.Parity("x", 10, 0.0, 1.0, 1e-2, 0.995).ok
    assert not ox.Parity("x", 10, 0.0, 0.9, 1e-2, 0.995).ok  # within tolerance, but calls flipped
    assert not ox.Parity("x", 10, 0.02, 1.0, 1e-2, 0.995).ok
