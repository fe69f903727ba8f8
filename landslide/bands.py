"""The band layout, declared once as data.

Every index the code uses is derived from these names; nothing slices channels by literal numbers.
A data set that carries a subset of the bands lists them in ``bands.txt`` (one canonical name per
line, in channel order); without that file the 12 Zindi bands in their official order are meant.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from landslide.errors import DataError

OPTICAL_BANDS: tuple[str, ...] = ("red", "green", "blue", "nir")
SAR_BANDS: tuple[str, ...] = (
    "vv_desc", "vh_desc", "vv_desc_diff", "vh_desc_diff",
    "vv_asc", "vh_asc", "vv_asc_diff", "vh_asc_diff",
)
ALL_BANDS: tuple[str, ...] = OPTICAL_BANDS + SAR_BANDS
BANDS_FILE = "bands.txt"


@dataclass(frozen=True)
class BandLayout:
    """Channel order of a data set, with the optical/SAR groups resolved to channel indices."""

    names: tuple[str, ...] = ALL_BANDS

    def __post_init__(self) -> None:
        unknown = [n for n in self.names if n not in ALL_BANDS]
        if unknown:
            raise DataError(f"unknown band name(s) {unknown}",
                            fix=f"use canonical names only: {', '.join(ALL_BANDS)}")
        dup = sorted({n for n in self.names if self.names.count(n) > 1})
        if dup:
            raise DataError(f"band name(s) listed twice: {dup}", fix="list each band once")
        if not self.names:
            raise DataError("no bands declared", fix=f"list at least one of {', '.join(ALL_BANDS)}")

    @property
    def n_channels(self) -> int:
        return len(self.names)

    @property
    def optical_idx(self) -> list[int]:
        """Channel indices of the optical bands present, in canonical optical order."""
        return [self.names.index(b) for b in OPTICAL_BANDS if b in self.names]

    @property
    def sar_idx(self) -> list[int]:
        """Channel indices of the SAR bands present, in canonical SAR order."""
        return [self.names.index(b) for b in SAR_BANDS if b in self.names]

    def to_list(self) -> list[str]:
        return list(self.names)

    @classmethod
    def from_dir(cls, data_dir: str | Path) -> BandLayout:
        """Read ``bands.txt`` from a data folder, or the full Zindi layout when it is absent."""
        path = Path(data_dir) / BANDS_FILE
        if not path.exists():
            return cls()
        try:
            lines = path.read_text(encoding="utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError) as e:  # a folder of that name, no permission, a binary file
            raise DataError(f"cannot read the band list ({e.__class__.__name__}: {e})", file=path,
                            fix="make bands.txt a UTF-8 text file of canonical band names, one per line "
                                "(or remove it: the full 12-band Zindi layout is then assumed)") from None
        names = tuple(line.strip() for line in lines if line.strip() and not line.startswith("#"))
        try:
            return cls(names)
        except DataError as e:
            raise DataError(e.problem, file=path, fix=e.fix) from None
