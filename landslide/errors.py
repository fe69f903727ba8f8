"""The project's error types. Each message names the file, the ID (when there is one) and the fix.

Scripts catch :class:`LandslideError` at the top and print its message without a traceback:
a user error is one clear line and a non-zero exit, never a stack dump.
"""
from __future__ import annotations

from pathlib import Path


class LandslideError(Exception):
    """A user-facing error: what is wrong, where, and how to fix it."""

    def __init__(self, problem: str, *, file: str | Path | None = None, id: str | None = None,
                 fix: str | None = None) -> None:
        self.problem, self.file, self.id, self.fix = problem, file, id, fix
        super().__init__(self.format())

    def __reduce__(self):
        # Picklable whatever a subclass's __init__ takes: under torchrun rank 0's error is broadcast to
        # the other ranks, which must re-raise the same message (BadFilesError's own signature can't).
        return _restore, (type(self), str(self), dict(self.__dict__))

    def format(self) -> str:
        where = []
        if self.file is not None:
            where.append(f"file {self.file}")
        if self.id is not None:
            where.append(f"ID {self.id}")
        msg = (", ".join(where) + ": " if where else "") + self.problem
        if self.fix:
            msg += f". Fix: {self.fix}"
        return msg


class DataError(LandslideError):
    """Input data (CSV, .npy, bands.txt) is missing or malformed."""


class BadFilesError(DataError):
    """Several patches are bad; all are named at once so the user fixes them in one pass."""

    def __init__(self, errors: list[DataError], *, fix: str) -> None:
        self.errors = errors
        # Five hundred missing files need one "restore the file" said once, not five hundred times: a fix
        # every file shares goes on a line of its own after the list.
        shared = errors[0].fix if len(errors) > 1 and len({e.fix for e in errors}) == 1 else None

        def line(e: DataError) -> str:  # one line: a reader's own message (numpy's, say) may hold a newline
            text = LandslideError(e.problem, file=e.file, id=e.id).format() if shared else e.format()
            return "  - " + " ".join(text.split("\n"))

        lines = "\n".join(line(e) for e in errors[:50])
        more = f"\n  ... and {len(errors) - 50} more" if len(errors) > 50 else ""
        each = f"\nEach file: {shared}" if shared else ""
        super().__init__(f"{len(errors)} bad patch file(s), one line per file:\n{lines}{more}{each}", fix=fix)

    def format(self) -> str:
        # The list ends a line: the overall fix goes on a line of its own, not glued to the last file.
        return f"{self.problem}\nFix: {self.fix}"


class ContractError(LandslideError):
    """An artefact (checkpoint, ONNX file, engine) does not match the data or the host."""


class ConfigError(LandslideError):
    """A flag or config file is invalid, or asks for something this host cannot do."""


class MissingArtefactError(ConfigError):
    """A run folder has no exported graph or engine (one that runs on this host) for the backend asked for:
    ``export.py`` makes it."""


class VerificationError(LandslideError):
    """An exported artefact does not reproduce the torch reference within tolerance."""


def _restore(cls: type[LandslideError], message: str, state: dict) -> LandslideError:
    e = cls.__new__(cls)
    Exception.__init__(e, message)
    e.__dict__.update(state)
    return e


def refuse_files_as_folders(**flags: str) -> None:
    """Refuse a folder flag (``out=...``, ``engine_dir=...``) that names an existing file, before any work:
    else a mkdir traceback once minutes of reading or tracing are done."""
    for name, folder in flags.items():
        if folder and Path(folder).is_file():
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} {folder} is a file; it takes a folder", file=folder,
                              fix=f"pass a folder (new or existing) to {flag}")
