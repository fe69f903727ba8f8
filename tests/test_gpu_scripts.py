"""The two shell scripts a lent GPU machine runs, exercised here on their plumbing.

A lease is 15 minutes with no room for a second attempt, so a bash slip in these scripts would cost the
only GPU run a task gets. What can be checked without a GPU is checked here: gpu_check's step table,
time budget and report on a host where every step fails fast; gpu_wheels' split/rejoin, hash check and
install on a tiny wheel, in a copy of the script (``stash`` moves files out of the tree it runs in).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the steps really run (minutes)")


def _gpu_check(out: Path, *steps: str, budget: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_BUDGET_S": str(budget)}
    return subprocess.run(["bash", str(ROOT / "bench/gpu_check.sh"), str(out), *steps], env=env,
                          capture_output=True, text=True, timeout=180)


@no_gpu
def test_gpu_check_records_each_step_in_order_and_reports(tmp_path):
    # Named out of order: the issue-3 targets still run first. Each step fails at once here (no CUDA).
    r = _gpu_check(tmp_path / "out", "infer", "data")
    assert r.returncode == 0, r.stderr
    summary = (tmp_path / "out/summary.md").read_text()
    rows = [line for line in summary.splitlines() if line.startswith("| bench.")]
    assert [row.split("|")[1].strip() for row in rows] == ["bench.data", "bench.infer"]
    assert all(row.split("|")[2].strip() == "2" for row in rows), rows  # the CLI's ConfigError exit code
    assert "preflight: missing required: none" in summary
    assert "--device cuda asked for, but this host has no CUDA GPU" in summary  # the log tail is in it
    assert r.stdout == summary  # and it is printed at the end
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["results.jsonl", "summary.md"]  # no tables or plots from steps that did not run


@no_gpu
def test_gpu_check_skips_steps_the_budget_cannot_fit(tmp_path):
    # 9 s: less than a step's 10 s floor from the start, so each step is skipped (not started with a short timeout)
    r = _gpu_check(tmp_path / "out", "data", "pytest", budget=9)
    assert r.returncode == 0, r.stderr
    summary = (tmp_path / "out/summary.md").read_text()
    assert "| bench.data | skipped: out of time | 0 |" in summary
    assert "| pytest-gpu | skipped: out of time | 0 |" in summary
    assert "=== bench.data" not in summary  # nothing was started


def test_gpu_check_refuses_an_unknown_step_before_running_anything(tmp_path):
    r = _gpu_check(tmp_path / "out", "data", "trian")
    assert r.returncode == 2
    assert "unknown step 'trian'" in r.stderr
    assert not (tmp_path / "out").exists()


def _tiny_wheel(folder: Path, size: int) -> Path:
    """A valid pure-Python wheel padded to about ``size`` bytes with an incompressible data file."""
    name = "ls_tiny-0.1-py3-none-any.whl"
    info = "ls_tiny-0.1.dist-info"
    files = {
        "ls_tiny/__init__.py": b"VALUE = 42\n",
        "ls_tiny/pad.bin": os.urandom(size),
        f"{info}/METADATA": b"Metadata-Version: 2.1\nName: ls-tiny\nVersion: 0.1\n",
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{k},,\n" for k in files) + f"{info}/RECORD,,\n"
    path = folder / name
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for k, v in files.items():
            z.writestr(k, v)
        z.writestr(f"{info}/RECORD", record)
    return path


def test_gpu_wheels_rejoins_checks_and_installs_split_parts(tmp_path):
    # A copy of the script in a throwaway tree; `fetch`'s layout built beside it: a wheel cut into pieces,
    # one piece a part, the manifest in the last part.
    tree = tmp_path / "tree"
    (tree / "bench").mkdir(parents=True)
    shutil.copy(ROOT / "bench/gpu_wheels.sh", tree / "bench/gpu_wheels.sh")
    whl = _tiny_wheel(tmp_path, 300_000)
    data = whl.read_bytes()
    pieces = [data[i:i + 128_000] for i in range(0, len(data), 128_000)]
    assert len(pieces) == 3
    parts = tmp_path / "parts"
    for k, piece in enumerate(pieces, 1):
        (parts / f"part-{k}").mkdir(parents=True)
        (parts / f"part-{k}/{whl.name}.{k - 1:03d}").write_bytes(piece)
    (parts / "part-3/MANIFEST.sha256").write_text(f"{hashlib.sha256(data).hexdigest()}  ./{whl.name}\n")
    # python3 on PATH is this interpreter (it has pip); the script calls python3, as on the GPU image.
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "python3").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')  # a symlink would lose the venv
    (shim / "python3").chmod(0o755)
    stash, site = tmp_path / "stash", tmp_path / "site"
    env = {**os.environ, "PATH": f"{shim}:{os.environ['PATH']}", "STASH": str(stash), "SITE": str(site)}

    def run(*args):
        return subprocess.run(["bash", str(tree / "bench/gpu_wheels.sh"), *args], env=env, capture_output=True,
                              text=True, timeout=120)

    r = run("install")  # before every part is stashed: names the fix, installs nothing
    assert r.returncode == 1 and "MANIFEST.sha256 missing: stash every part first" in r.stderr
    # Each call carries one part; the folders of the parts stashed before it are empty by then.
    for k in (1, 2, 3):
        shutil.copytree(parts / f"part-{k}", tree / f".whl/part-{k}")
        r = run("stash")
        assert r.returncode == 0, r.stderr
        assert f"stashed 1 part(s) in {stash}: {k + (k == 3)} file(s)" in r.stdout
        assert not any((tree / f".whl/part-{k}").iterdir())
    r = run("stash")  # a call that forgot its carry
    assert r.returncode == 1 and "no .whl/part-* in the tree" in r.stderr

    # A lost piece is caught by the hash check, naming the wheel; nothing is installed.
    (stash / f"{whl.name}.002").unlink()
    r = run("install")
    assert r.returncode == 1 and "wheels incomplete or corrupt" in r.stderr and whl.name in r.stdout + r.stderr
    assert not site.exists()

    # Every piece there: rejoined byte for byte and installed. The call then checks that DALI imports with
    # PYTHONPATH=$SITE (as gpu_check will run): it does wherever requirements.txt was installed in this
    # interpreter, and its absence ends the call otherwise (also where DALI is only on this process's PYTHONPATH).
    (stash / whl.name).unlink()
    for i, piece in enumerate(pieces):
        (stash / f"{whl.name}.{i:03d}").write_bytes(piece)
    r = run("install")
    assert (stash / whl.name).read_bytes() == data
    assert not list(stash.glob("*.whl.[0-9][0-9][0-9]"))
    assert (site / "ls_tiny/__init__.py").read_text() == "VALUE = 42\n"
    dali_there = subprocess.run([sys.executable, "-c", "import nvidia.dali"], env={**env, "PYTHONPATH": str(site)},
                                capture_output=True).returncode == 0
    if dali_there:
        assert r.returncode == 0, r.stderr
        assert f"installed in {site}: DALI" in r.stdout
    else:
        assert r.returncode == 1 and "nvidia" in r.stderr


def test_gpu_wheels_fetch_packs_parts_under_the_limit_and_prints_the_calls(tmp_path):
    # pip download is faked (no registry in a test): one wheel over the part size, three small ones.
    tree = tmp_path / "tree"
    (tree / "bench").mkdir(parents=True)
    shutil.copy(ROOT / "bench/gpu_wheels.sh", tree / "bench/gpu_wheels.sh")
    (tree / ".gitignore").write_text(".whl/\n")
    sizes = {"big-1.0-py3-none-any.whl": 2_600_000, "a-1.0-py3-none-any.whl": 300_000,
             "b-1.0-py3-none-any.whl": 600_000, "c-1.0-py3-none-any.whl": 400_000}
    made = "; ".join(f'head -c {n} /dev/urandom >"$d/{name}"' for name, n in sizes.items())
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "python3").write_text(
        "#!/bin/bash\n"
        'if [ "$1 $2 $3" = "-m pip download" ]; then\n'
        '  while [ $# -gt 0 ]; do [ "$1" = -d ] && d=$2; shift; done\n'
        f"  {made}\n  exit 0\nfi\n"
        f'exec "{sys.executable}" "$@"\n')
    (shim / "python3").chmod(0o755)
    env = {**os.environ, "PATH": f"{shim}:{os.environ['PATH']}", "PART_MIB": "1"}
    r = subprocess.run(["bash", str(tree / "bench/gpu_wheels.sh"), "fetch"], cwd=tree, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    parts = sorted((tree / ".whl").iterdir(), key=lambda p: int(p.name.split("-")[1]))
    limit = 1024 * 1024
    assert all(sum(f.stat().st_size for f in p.iterdir()) <= limit for p in parts)
    files = {f.name: f for p in parts for f in p.iterdir()}
    big = [files[n] for n in sorted(files) if n.startswith("big-1.0-py3-none-any.whl.")]
    assert [f.name[-3:] for f in big] == ["000", "001", "002"]  # cut in order, one piece a part
    assert len({f.parent for f in big}) == 3
    # First fit: a (0.3 MB) joins the big wheel's last piece (0.5 MB); b (0.6 MB) does not fit there and
    # opens part 4, which c (0.4 MB) then fills; the manifest goes into the first part with room.
    assert [sorted(f.name for f in p.iterdir() if not f.name.startswith("big")) for p in parts] == [
        [], [], ["MANIFEST.sha256", "a-1.0-py3-none-any.whl"], ["b-1.0-py3-none-any.whl", "c-1.0-py3-none-any.whl"]]
    # the manifest checks the wheels as they will be once rejoined
    joined = tmp_path / "joined"
    joined.mkdir()
    (joined / "big-1.0-py3-none-any.whl").write_bytes(b"".join(f.read_bytes() for f in big))
    for name in sizes:
        if name in files:
            shutil.copy(files[name], joined / name)
    shutil.copy(files["MANIFEST.sha256"], joined)
    assert (joined / "big-1.0-py3-none-any.whl").stat().st_size == sizes["big-1.0-py3-none-any.whl"]
    assert subprocess.run(["sha256sum", "--quiet", "-c", "MANIFEST.sha256"], cwd=joined).returncode == 0
    # one call per part, back to back: the first also benchmarks inference, the last installs and checks
    calls = [line for line in r.stdout.splitlines() if line.strip().startswith("carry=")]
    assert len(calls) == 4
    assert calls[0].endswith("stash && bash bench/gpu_check.sh $OUT infer")
    assert calls[1].endswith("stash") and calls[2].endswith("stash")
    assert "install && PYTHONPATH=/tmp/site bash bench/gpu_check.sh $OUT data train pytest" in calls[3]
