"""``landslide.Predictor``: what ``infer.py`` does, in-process.

    from landslide import Predictor
    p = Predictor("runs/demo")                  # or runs/demo/export/fused.onnx, engines/fused-*.pt2, ...
    probs = p.predict(patches)                  # (B, 64, 64, C) or (64, 64, C) float32 raw -> (B,) / ()
    ids, probs = p.predict_dir("data/synth")    # Test.csv + test_data/, the same numbers as infer.py
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from landslide.errors import DataError

log = logging.getLogger(__name__)


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
        from landslide.utils import quiet_cuda_home_noise

        quiet_cuda_home_noise()  # an AOTI package or torch.compile on a GPU-less host: as quiet as infer.py
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
        with np.errstate(over="ignore"):  # a float64 value beyond float32's range becomes inf: refused below
            x = np.asarray(x, dtype=np.float32)
        single = x.ndim == 3
        x = x[None] if single else x
        want = tuple(self.contract["input_shape"])
        if x.ndim != 4 or x.shape[1:] != want:
            raise DataError(f"patch array of shape {x.shape[1:] if x.ndim == 4 else x.shape}, expected {want}",
                            fix=f"pass (B, {', '.join(map(str, want))}) raw patches in bands {self.contract['bands']}")
        if len(x) == 0:
            return np.zeros(0, np.float32)
        # As infer.py refuses such files: a NaN patch would come back as a NaN probability, called 0.
        if bad := np.flatnonzero(~np.isfinite(x).all(axis=(1, 2, 3))).tolist():
            raise DataError(f"{len(bad)} patch(es) hold NaN/Inf (or values beyond float32), at index "
                            f"{', '.join(map(str, bad[:10]))}{' ...' if len(bad) > 10 else ''}",
                            fix="mend or drop those patches before predict()")
        bs = self.cfg.batch_size
        out = np.concatenate([self.runner.predict(x[s:s + bs]) for s in range(0, len(x), bs)])
        return out[0] if single else out

    def predict_dir(self, data_dir: str | Path, split: str = "test", skip_bad: bool = False) -> tuple[list[str], np.ndarray]:
        """Score a Zindi-layout folder's split: ``(ids, probs (N,))`` in CSV order. Bad files raise, all named
        at once; ``skip_bad=True`` leaves them out of ``ids`` and logs each one."""
        from landslide.bands import BandLayout
        from landslide.contract import check_data
        from landslide.data import SPLITS, read_csv, require_data_dir
        from landslide.infer import score

        data = require_data_dir(data_dir)
        check_data(self.contract, BandLayout.from_dir(data), artefact=self.cfg.run, data_dir=data)
        ids = read_csv(data / SPLITS[split][0], labelled=False).ids
        r = score(self.runner, data, split, ids, self.cfg.batch_size, skip_bad)
        for e in r.skipped:  # as infer.py: every skipped file named, then the count
            log.warning("skipped: %s", e.format())
        if r.skipped:
            log.warning("%d bad patch file(s) skipped (listed above): %d of the %d IDs scored", len(r.skipped),
                        len(r.ids), len(ids))
        return r.ids, r.probs

    def describe(self) -> str:
        return self.runner.describe()
