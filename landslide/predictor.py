"""``landslide.Predictor``: what ``infer.py`` does, in-process.

    from landslide import Predictor
    p = Predictor("runs/demo")                  # or runs/demo/export/fused.onnx, engines/fused-*.pt2, ...
    probs = p.predict(patches)                  # (B, 64, 64, C) or (64, 64, C) float32 raw -> (B,) / ()
    ids, probs = p.predict_dir("data/synth")    # Test.csv + test_data/, the same numbers as infer.py
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from landslide.errors import DataError


class Predictor:
    """A run folder or exported artefact, loaded once, scoring raw patches in-process as ``infer.py`` does.

    ``backend`` (auto | torch | onnxruntime | aoti | tensorrt), ``batch_size`` and any other ``infer.py``
    flag as a keyword (``device="cpu"``, ``precision="fp16"``, ``threshold=0.4``). ``predict`` returns the
    calibrated ensemble's probabilities; ``probs >= p.threshold`` gives the 0/1 calls a submission holds
    (``p.threshold``: the run's calibrated one, or ``threshold=`` when given).
    """

    def __init__(self, path: str | Path, backend: str = "auto", batch_size: int = 64, **options: Any) -> None:
        from landslide.config import make_config
        from landslide.infer import InferConfig, check_threshold, make_runner

        self.cfg = make_config(InferConfig, {"run": str(path), "backend": backend, "batch_size": batch_size,
                                             **options})
        own = check_threshold(self.cfg)  # threshold=T: an operating point of the caller's, as infer.py's flag
        self.runner = make_runner(self.cfg)
        self.backend = self.runner.backend  # what "auto" resolved to
        self.threshold = self.runner.threshold if own is None else own
        self.contract = self.runner.contract

    def __repr__(self) -> str:
        return f"Predictor({self.cfg.run!r}, backend={self.backend!r}: {self.describe()}, threshold={self.threshold:.3f})"

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Raw patches ``(B, 64, 64, C)`` (or one ``(64, 64, C)``) -> probabilities ``(B,)`` (or a scalar)."""
        x = np.asarray(x, dtype=np.float32)
        single = x.ndim == 3
        x = x[None] if single else x
        want = tuple(self.contract["input_shape"])
        if x.ndim != 4 or x.shape[1:] != want:
            raise DataError(f"patch array of shape {x.shape[1:] if x.ndim == 4 else x.shape}, expected {want}",
                            fix=f"pass (B, {', '.join(map(str, want))}) raw patches in bands {self.contract['bands']}")
        bs = self.cfg.batch_size
        out = np.concatenate([self.runner.predict(x[s:s + bs]) for s in range(0, len(x), bs)])
        return out[0] if single else out

    def predict_dir(self, data_dir: str | Path, split: str = "test", skip_bad: bool = False) -> tuple[list[str], np.ndarray]:
        """Score a Zindi-layout folder's split: ``(ids, probs (N,))`` in CSV order (bad files: see infer)."""
        from landslide.bands import BandLayout
        from landslide.contract import check_data
        from landslide.data import SPLITS, read_csv, require_data_dir
        from landslide.infer import score

        data = require_data_dir(data_dir)
        check_data(self.contract, BandLayout.from_dir(data), artefact=self.cfg.run, data_dir=data)
        ids = read_csv(data / SPLITS[split][0], labelled=False).ids
        r = score(self.runner, data, split, ids, self.cfg.batch_size, skip_bad)
        return r.ids, r.probs

    def describe(self) -> str:
        return self.runner.describe()
