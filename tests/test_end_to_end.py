"""The real entry points, end to end on the CPU with a tiny backbone: train -> calibrate -> infer."""
import csv
import json

import numpy as np
import pytest
import torch

from landslide.augment.compiled import cpp_compiler

from conftest import run_script

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(synth_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "r"
    cache = tmp_path_factory.mktemp("cache")
    r = run_script("train.py", "--data", str(synth_data), "--preset", "tiny", "--out", str(run),
                   "--archs", "test_efficientnet,test_efficientnet@80", "--cache-dir", str(cache))
    assert r.returncode == 0, r.stderr
    return run, r


def test_train_writes_the_run_folder(trained):
    run, r = trained
    for name in ("config.json", "contract.json", "folds.csv", "metrics.csv", "oof.csv", "calibration.json",
                 "plots/training_curves.png", "plots/oof_pr_confusion.png"):
        assert (run / name).is_file(), name
    # the one start-up line; --augment-kernel auto compiles the torch backend's CPU kernels where g++ is
    pipeline = "torch-compiled" if cpp_compiler() else "torch"
    assert "device=cpu" in r.stderr and f"data_backend={pipeline} " in r.stderr
    assert ("augmentation kernels compiled" in r.stderr) == (pipeline == "torch-compiled")  # logged apart
    assert f"run folder {run} complete; next: python infer.py {run} --data DIR" in r.stderr.strip().splitlines()[-1]
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["data_backend"] == pipeline
    assert cfg["config"]["preset"] == "tiny" and "torch" in cfg["versions"]
    cal = json.loads((run / "calibration.json").read_text())
    assert set(cal["weights"]) == {"test_efficientnet", "test_efficientnet@80"}
    assert abs(sum(cal["weights"].values()) - 1) < 1e-9 and 0 < cal["threshold"] < 1
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert {(r["fold"], r["arch"]) for r in rows} == {(f, a) for f in "01" for a in cal["weights"]}
    oof = list(csv.DictReader(open(run / "oof.csv")))
    assert len(oof) == 60 and all(0 <= float(o["prob_test_efficientnet@80"]) <= 1 for o in oof)
    # the honest figure is computed from the OOF file's own columns and folds, and logged beside the upper bound
    from landslide.calibrate import crossfit_f1

    probs = np.array([[float(o[f"prob_{a}"]) for a in cfg["config"]["archs"]] for o in oof])
    y, folds = np.array([int(o["label"]) for o in oof]), np.array([int(o["fold"]) for o in oof])
    assert cal["oof_f1_crossfit"] == pytest.approx(crossfit_f1(y, probs, folds))
    # calibration.json is calibrate() of these very columns, each under its own architecture's name (the
    # per-arch F1s tell the columns apart; the file keeps 6 decimals, so compare loosely).
    from landslide.calibrate import best_threshold, calibrate

    again = calibrate(y, probs, cfg["config"]["archs"])
    for arch in cfg["config"]["archs"]:
        assert cal["per_arch"][arch]["f1"] == pytest.approx(again["per_arch"][arch]["f1"], abs=1e-6)
        assert cal["weights"][arch] == pytest.approx(again["weights"][arch], abs=1e-9)
    assert cal["oof_f1"] == pytest.approx(best_threshold(y, probs @ np.array(list(again["weights"].values())))[1],
                                          abs=1e-6)
    assert f"{cal['oof_f1_crossfit']:.4f} with each fold called at the weights and threshold fitted on the other" in r.stderr


def test_checkpoint_carries_its_contract(trained):
    run, _ = trained
    ck = torch.load(run / "fold0" / "test_efficientnet_80.pt", weights_only=False)
    assert ck["format"] == "landslide-checkpoint/1" and ck["model_cfg"]["img_size"] == 80
    assert ck["contract"]["bands"][0] == "red" and len(ck["mean"]) == 12 and ck["contract"]["input_shape"] == [64, 64, 12]


def test_checkpoint_loads_onto_the_requested_device(trained):
    # The OOF pass loads the best checkpoint onto the training device; a net left on the host while its
    # batches go to the GPU fails there. "meta" stands in for a device this host lacks.
    from landslide.train import load_checkpoint

    run, _ = trained
    net, ck = load_checkpoint(run / "fold0" / "test_efficientnet.pt", torch.device("meta"))
    tensors = [*net.parameters(), *net.buffers()]
    assert tensors and {t.device.type for t in tensors} == {"meta"} and not net.training
    assert ck["arch"] == "test_efficientnet"


def test_oof_predictions_are_the_best_checkpoints_tta_probabilities(trained, synth_data, tmp_path):
    """What calibration is fitted on: each fold's validation rows scored by that fold's saved (best)
    checkpoint with the 4-view TTA, for every architecture, in the data's ID order."""
    from landslide.contract import checkpoint_path
    from landslide.data import load_split
    from landslide.device import resolve_runtime
    from landslide.train import load_checkpoint, predict

    run, _ = trained
    split = load_split(synth_data, "train", cache_dir=tmp_path)
    rows = list(csv.DictReader(open(run / "oof.csv")))
    assert [r["ID"] for r in rows] == split.ids
    fold = np.array([int(r["fold"]) for r in rows])
    rt = resolve_runtime("cpu")
    for arch in ("test_efficientnet", "test_efficientnet@80"):
        got = np.array([float(r[f"prob_{arch}"]) for r in rows])
        for k in (0, 1):
            net, _ = load_checkpoint(checkpoint_path(run, k, arch))
            want = predict(net, split.x[torch.from_numpy(fold == k)], rt, 64, tta=True)
            np.testing.assert_allclose(got[fold == k], want, atol=2e-6)


def test_each_fold_standardises_with_its_own_training_rows_only(trained, synth_data, tmp_path):
    """Normalisation statistics are fitted on the fold's training rows: the held-out rows (whose OOF
    probabilities calibrate the ensemble) must not leak into them."""
    from landslide.contract import checkpoint_path
    from landslide.data import load_split
    from landslide.preprocess import fit_stats

    run, _ = trained
    split = load_split(synth_data, "train", cache_dir=tmp_path)
    fold = np.array([int(r["fold"]) for r in csv.DictReader(open(run / "oof.csv"))])
    all_mean, _ = fit_stats(split.x)
    for k in (0, 1):
        ck = torch.load(checkpoint_path(run, k, "test_efficientnet"), weights_only=False)
        mean, std = fit_stats(split.x, np.flatnonzero(fold != k))
        np.testing.assert_allclose(ck["mean"], mean.tolist(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ck["std"], std.tolist(), rtol=1e-5, atol=1e-6)
        assert not np.allclose(ck["mean"], all_mean.tolist(), rtol=1e-5, atol=1e-6)


def test_fused_ensemble_weighs_archs_and_averages_folds_as_calibrated(trained, tmp_path):
    """The served probability is sum over archs of calibration.json's weight (by name) x the mean over
    folds of the mean over the 4 flip views of sigmoid(logit): checked by hand with uneven weights and
    three folds (the trained run has two and weights that may land on a corner)."""
    import shutil

    from landslide.contract import checkpoint_path
    from landslide.ensemble import build_ensemble
    from landslide.train import load_checkpoint

    run, _ = trained
    copy = tmp_path / "r"
    shutil.copytree(run, copy)
    shutil.copytree(copy / "fold0", copy / "fold2")  # a third fold (fold 0's nets again)
    cal = json.loads((copy / "calibration.json").read_text())
    cal["weights"] = {"test_efficientnet": 0.3, "test_efficientnet@80": 0.7}
    (copy / "calibration.json").write_text(json.dumps(cal))
    module, info = build_ensemble(copy)
    assert info.folds == [0, 1, 2]
    x = torch.rand(3, 64, 64, 12, generator=torch.Generator().manual_seed(0)) * 100
    with torch.no_grad():
        got = module(x)
        z = module.preprocess(x)  # checked against the training cache in test_preprocess
        views = [z, z.flip(3), z.flip(2), z.flip((2, 3))]
        want = torch.zeros(3)
        for arch, w in cal["weights"].items():
            nets = [load_checkpoint(checkpoint_path(copy, k, arch))[0] for k in (0, 1, 2)]
            want += w * torch.stack([torch.stack([torch.sigmoid(n(v)) for v in views]).mean(0) for n in nets]).mean(0)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_infer_writes_submission(trained, synth_data, tmp_path):
    run, _ = trained
    out = tmp_path / "sub.csv"
    r = run_script("infer.py", str(run), "--data", str(synth_data), "--out", str(out), "--probs")
    assert r.returncode == 0, r.stderr
    rows = list(csv.reader(open(out)))
    assert rows[0] == ["ID", "Target"]
    test_ids = [line.strip() for line in open(synth_data / "Test.csv", encoding="utf-8-sig")][1:]
    assert [r[0] for r in rows[1:]] == test_ids and {r[1] for r in rows[1:]} <= {"0", "1"}
    probs = list(csv.DictReader(open(tmp_path / "sub_probs.csv")))
    thr = json.loads((run / "calibration.json").read_text())["threshold"]
    assert [int(float(p["prob"]) >= thr) for p in probs] == [int(r[1]) for r in rows[1:]]


def test_sharded_inference_equals_unsharded(trained, synth_data, tmp_path):
    run, _ = trained
    base = ["infer.py", str(run), "--data", str(synth_data), "--out", str(tmp_path / "sub.csv"), "--probs"]
    r = run_script(*base)
    assert r.returncode == 0, r.stderr
    whole = {f: (tmp_path / f).read_text() for f in ("sub.csv", "sub_probs.csv")}
    for f in whole:
        (tmp_path / f).unlink()
    for shard in ("0/2", "1/2"):  # each shard to its own file, and the log says where and how to merge
        r = run_script(*base, "--shard", shard)
        assert r.returncode == 0, r.stderr
        k = shard[0]
        assert f"wrote {tmp_path / f'sub.shard{k}of2.csv'}" in r.stderr and "--merge-shards" in r.stderr
    assert not (tmp_path / "sub.csv").exists()
    r = run_script("infer.py", str(run), "--merge-shards", "--data", str(synth_data), "--out", str(tmp_path / "sub.csv"))
    assert r.returncode == 0, r.stderr
    assert {f: (tmp_path / f).read_text() for f in whole} == whole


def test_torch_ensemble_tta_is_flip_invariant(trained):
    from landslide.ensemble import build_ensemble

    m, _ = build_ensemble(trained[0])
    x = torch.rand(3, 64, 64, 12) * 100
    with torch.no_grad():
        p = m(x)
        assert torch.allclose(p, m(x.flip(2)), atol=1e-5) and torch.allclose(p, m(x.flip(1)), atol=1e-5)


def test_fused_equals_looped(trained):
    from landslide.ensemble import build_ensemble

    fused, _ = build_ensemble(trained[0])
    looped, _ = build_ensemble(trained[0], looped=True)
    x = torch.rand(5, 64, 64, 12) * 50
    with torch.no_grad():
        assert np.allclose(fused(x).numpy(), looped(x).numpy(), atol=1e-6)


def test_optical_only_data_trains_exports_and_scores(tmp_path):
    """An RGB-only set (the Bijie layout): the optical branch trains alone, and the ensemble without SAR
    bands (no median filter in the graph) exports, verifies in FP32 and FP16, and scores through ONNX Runtime
    to the torch runner's probabilities."""
    from conftest import write_zindi

    d = write_zindi(tmp_path / "rgb", n_train=12, n_test=4, channels=3, bands=["red", "green", "blue"])
    run = tmp_path / "run"
    r = run_script("train.py", "--data", str(d), "--preset", "tiny", "--out", str(run), "--cache-dir",
                   str(tmp_path / "cache"))
    assert r.returncode == 0, r.stderr
    assert json.loads((run / "contract.json").read_text())["bands"] == ["red", "green", "blue"]
    r = run_script("export.py", str(run), "--data", str(d), "--n-verify", "4")
    assert r.returncode == 0, r.stderr
    probs = {}
    for backend in ("torch", "onnxruntime"):
        out = tmp_path / f"{backend}.csv"
        r = run_script("infer.py", str(run), "--data", str(d), "--backend", backend, "--out", str(out), "--probs")
        assert r.returncode == 0, r.stderr
        assert [row["ID"] for row in csv.DictReader(open(out))] == [f"ID_TE{i:04d}" for i in range(4)]
        probs[backend] = np.array([float(row["prob"]) for row in csv.DictReader(open(tmp_path / f"{backend}_probs.csv"))])
    np.testing.assert_allclose(probs["onnxruntime"], probs["torch"], atol=1e-5)
