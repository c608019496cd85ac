"""`python -m mmray.tune` on bad input: exit status 2, one line on stderr naming the file, nothing written.

Every case here fails before Ray would start, so no Ray instance is started. Each `python -m mmray.tune`
spends seconds importing torch and Ray Data, so to stay fast every case runs through the real entry module
(`runpy.run_module("mmray.tune")`) inside ONE helper process, with its stdout/stderr captured at the file
descriptor level; two cases also run as their own `python -m mmray.tune` process, end to end. All in parallel.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
VALID = {
    "method": "joint", "dataset": "synthetic-av", "metric": "val/fused_acc", "mode": "max",
    "num_samples": 2, "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
    "fixed": {"epochs": 2},
    "params": {"lr": {"type": "log-float", "low": 1.0e-4, "high": 1.0e-2}},
}


@dataclass
class Case:
    args: list[str]
    named: Path  # the file or folder the error line must name
    storage: Path
    cache: Path
    returncode: int | None = None
    stdout: str = ""
    stderr: str = ""


def _space(folder: Path, content: dict | str, name: str = "space.yaml") -> Path:
    path = folder / name
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return path


def _setup(case: str, d: Path) -> tuple[list[str], Path]:
    """(extra command-line arguments, the path the error must name) for each case."""
    if case == "missing space file":
        return ["--space", str(d / "nope.yaml")], d / "nope.yaml"
    if case == "malformed YAML":
        path = _space(d, "method: joint\nparams: {lr: [1, 2\n")
        return ["--space", str(path)], path
    if case == "unknown method":
        path = _space(d, {**VALID, "method": "no-such-method"})
        return ["--space", str(path)], path
    if case == "inverted range":
        path = _space(d, {**VALID, "params": {"lr": {"type": "log-float", "low": 1.0e-2, "high": 1.0e-4}}})
        return ["--space", str(path)], path
    if case == "data dir without manifest":
        (d / "data").mkdir()
        return ["--space", str(_space(d, VALID)), "--data-dir", str(d / "data")], d / "data"
    if case == "data dir with a non-object manifest":
        (d / "data").mkdir()
        (d / "data" / "manifest.json").write_text("[]")
        return ["--space", str(_space(d, VALID)), "--data-dir", str(d / "data")], d / "data"
    if case == "data dir missing":
        return ["--space", str(_space(d, VALID)), "--data-dir", str(d / "nowhere")], d / "nowhere"
    if case == "existing experiment":
        (d / "res" / "joint").mkdir(parents=True)
        (d / "res" / "joint" / "keep.txt").write_text("earlier results")
        return ["--space", str(_space(d, VALID, name="joint.yaml")), "--name", "joint"], d / "res" / "joint"
    if case == "name leading out of the storage":
        return ["--space", str(_space(d, VALID)), "--name", "../escaped"], Path("../escaped")
    if case == "absolute name":
        return ["--space", str(_space(d, VALID)), "--name", str(d / "elsewhere")], d / "elsewhere"
    if case == "space name leading out of the storage":
        return ["--space", str(_space(d, {**VALID, "name": "../escaped"}))], Path("../escaped")
    if case == "storage is a file":
        (d / "file").write_text("not a folder")
        return ["--space", str(_space(d, VALID)), "--storage", str(d / "file")], d / "file"
    if case == "storage under a file":
        (d / "file").write_text("not a folder")
        return ["--space", str(_space(d, VALID)), "--storage", str(d / "file" / "res")], d / "file"
    if case == "NaN learning rate bound":
        path = _space(d, {**VALID, "params": {"lr": {"type": "log-float", "low": 1.0e-4, "high": float("nan")}}})
        return ["--space", str(path)], path
    raise ValueError(case)


CASES = ["missing space file", "malformed YAML", "unknown method", "inverted range",
         "data dir without manifest", "data dir with a non-object manifest", "data dir missing",
         "existing experiment", "name leading out of the storage", "absolute name",
         "space name leading out of the storage", "storage is a file", "storage under a file",
         "NaN learning rate bound"]
OWN_PROCESS = ["malformed YAML", "existing experiment"]  # also run as their own `python -m mmray.tune`

# Runs each case through the real `python -m mmray.tune` entry module, one after another, in one process.
DRIVER = r"""
import json, os, runpy, sys, traceback
spec_file, codes_file = sys.argv[1:3]
cases = json.load(open(spec_file))
codes = {}
for name, case in cases.items():
    os.environ["MMRAY_CACHE"] = case["cache"]
    sys.stdout.flush(); sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(case["log"] + ".out", "w") as out, open(case["log"] + ".err", "w") as err:
        os.dup2(out.fileno(), 1); os.dup2(err.fileno(), 2)
        try:
            sys.argv = ["mmray.tune", *case["args"]]
            runpy.run_module("mmray.tune", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (e.code is not None)
        except BaseException:
            traceback.print_exc()  # what Python itself would print for an uncaught exception
            code = 1
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            os.dup2(saved[0], 1); os.dup2(saved[1], 2)
    codes[name] = code
with open(codes_file, "w") as f:
    json.dump(codes, f)
"""


def _env(cache: Path) -> dict:
    return {**os.environ, "RAY_AUTH_MODE": "disabled", "MMRAY_CACHE": str(cache),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def _make_case(tmp_path_factory, name: str) -> Case:
    d = tmp_path_factory.mktemp(name.replace(" ", "_"))
    args, named = _setup(name, d)
    storage = [] if "--storage" in args else ["--storage", str(d / "res")]
    return Case(args=[*args, *storage], named=named, storage=d / "res", cache=d / "cache")


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[tuple[str, str], Case]:
    """(how, case name) -> the finished Case; how is "shared" (the helper process) or "own" (its own process)."""
    shared = {name: _make_case(tmp_path_factory, name) for name in CASES}
    own = {name: _make_case(tmp_path_factory, name) for name in OWN_PROCESS}
    logs = tmp_path_factory.mktemp("logs")
    spec = {name: {"args": c.args, "cache": str(c.cache), "log": str(logs / f"case{i}")}
            for i, (name, c) in enumerate(shared.items())}
    (logs / "cases.json").write_text(json.dumps(spec))
    pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=logs)
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(logs / "cases.json"), str(logs / "codes.json")],
                              env=_env(logs / "driver-cache"), **pipes)
    procs = {name: subprocess.Popen([sys.executable, "-m", "mmray.tune", *c.args], env=_env(c.cache), **pipes)
             for name, c in own.items()}
    for name, proc in procs.items():
        own[name].stdout, own[name].stderr = proc.communicate(timeout=300)
        own[name].returncode = proc.returncode
    driver_out, driver_err = driver.communicate(timeout=300)
    assert driver.returncode == 0, f"the helper process itself failed: {driver_err}"
    codes = json.loads((logs / "codes.json").read_text())
    for name, case in shared.items():
        case.returncode = codes[name]
        case.stdout = Path(spec[name]["log"] + ".out").read_text()
        case.stderr = Path(spec[name]["log"] + ".err").read_text()
    assert not (logs / "driver-cache").exists()
    return {**{("shared", n): c for n, c in shared.items()}, **{("own", n): c for n, c in own.items()}}


ALL = [("shared", n) for n in CASES] + [("own", n) for n in OWN_PROCESS]
IDS = [f"{how}-{name.replace(' ', '_')}" for how, name in ALL]


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


@pytest.mark.parametrize("key", ALL, ids=IDS)
def test_bad_input_exits_2_with_one_line_naming_the_path(results, key):
    case = results[key]
    assert "Traceback" not in case.stderr, case.stderr
    assert case.returncode == 2, (case.returncode, case.stderr)
    lines = case.stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), f"stderr is not exactly one line: {case.stderr!r}"
    assert lines[0].startswith("mmray: error:"), lines[0]
    assert str(case.named) in lines[0], f"error line does not name {case.named}: {lines[0]!r}"


@pytest.mark.parametrize("key", ALL, ids=IDS)
def test_bad_input_starts_no_ray_and_writes_nothing(results, key):
    name = key[1]
    case = results[key]
    output = case.stdout + case.stderr
    assert "Started a local Ray instance" not in output and "Ray dashboard" not in output, output
    assert not case.cache.exists(), _files(case.cache)  # no dataset was prepared
    if name == "existing experiment":
        assert _files(case.storage) == ["joint", "joint/keep.txt"]
        assert (case.storage / "joint" / "keep.txt").read_text() == "earlier results"
    else:
        assert not case.storage.exists(), _files(case.storage)
    assert not (case.storage.parent / "escaped").exists() and not (case.storage.parent / "elsewhere").exists()
    if name.startswith("storage"):
        assert (case.storage.parent / "file").read_text() == "not a folder"


@pytest.mark.parametrize("name, words", [
    ("missing space file", "no such search space file"), ("malformed YAML", "malformed YAML"),
    ("unknown method", "no-such-method"), ("inverted range", "params.lr"), ("data dir without manifest", "no manifest"),
    ("data dir with a non-object manifest", "manifest"), ("data dir missing", "does not exist"),
    ("existing experiment", "--resume"), ("name leading out of the storage", "--name"),
    ("absolute name", "single folder name"), ("storage is a file", "not a folder"),
    ("storage under a file", "is a file"), ("NaN learning rate bound", "params.lr.high"),
])
def test_error_line_says_what_is_wrong(results, name, words):
    assert words in results[("shared", name)].stderr


# --- the other commands, in this process: every bad input is refused before Ray starts ---------------------------


def _door_case(case: str, d: Path) -> tuple[list[str], str]:
    """(mmray arguments, what the error line must name) for each case."""
    raw = d / "raw"
    raw.mkdir()
    if case == "train with a missing data folder":
        return ["train", "--data-dir", str(d / "nowhere")], str(d / "nowhere")
    if case == "purify on a missing path":
        return ["purify", str(d / "nowhere")], str(d / "nowhere")
    if case == "diagnose on a truncated best.json":
        (d / "exp").mkdir()
        (d / "exp" / "best.json").write_text('{"checkpoint": "/some/whe')
        return ["diagnose", str(d / "exp")], str(d / "exp" / "best.json")
    if case == "purify on a truncated best.json":
        (d / "exp").mkdir()
        (d / "exp" / "best.json").write_text('{"check')
        return ["purify", str(d / "exp")], str(d / "exp" / "best.json")
    for flag in ("--rows-per-shard", "--hop", "--n-fft", "--image-size", "--fps"):
        if case == f"prepare with {flag} 0":
            return ["prepare", "cremad", "--root", str(raw), "--out", str(d / "out"), flag, "0"], f"{flag}: 0"
    if case == "prepare onto an existing dataset":
        (d / "out").mkdir()
        (d / "out" / "manifest.json").write_text("{}")
        return ["prepare", "cremad", "--root", str(raw), "--out", str(d / "out")], str(d / "out")
    if case == "prepare into the current folder":
        return ["prepare", "synthetic-av", "--out", "."], "current folder"
    raise ValueError(case)


DOOR_CASES = ["train with a missing data folder", "purify on a missing path", "diagnose on a truncated best.json",
              "purify on a truncated best.json", *(f"prepare with {f} 0" for f in ("--rows-per-shard", "--hop",
              "--n-fft", "--image-size", "--fps")), "prepare onto an existing dataset", "prepare into the current folder"]


@pytest.mark.parametrize("case", DOOR_CASES)
def test_other_commands_refuse_bad_input_at_the_door(tmp_path, monkeypatch, capsys, case):
    import ray

    from mmray.cli import main

    ray.shutdown()
    args, named = _door_case(case, tmp_path)
    monkeypatch.chdir(tmp_path)  # holds raw/ (and more): not a place for a dataset
    monkeypatch.setenv("MMRAY_CACHE", str(tmp_path / "cache"))
    before = {str(p): p.read_bytes() if p.is_file() else None for p in tmp_path.rglob("*")}
    assert main(args) == 2
    assert not ray.is_initialized(), "Ray started before the input was checked"
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("mmray: error:") and named in err, err
    after = {str(p): p.read_bytes() if p.is_file() else None for p in tmp_path.rglob("*")}
    assert after == before, "a refused command changed files"


@pytest.mark.parametrize("code", ["ENOSPC", "EROFS"])
def test_full_or_read_only_disk_is_one_line_naming_the_file(capsys, code):
    import errno as errnos

    from mmray.cli import run_command

    def write(_args):
        raise OSError(getattr(errnos, code), os.strerror(getattr(errnos, code)), "/data/out.partial/train/part-00003.parquet")

    assert run_command(write, None) == 2
    err = capsys.readouterr().err
    assert err == f"mmray: error: /data/out.partial/train/part-00003.parquet: {os.strerror(getattr(errnos, code))}\n"


def test_other_os_errors_keep_their_traceback():
    from mmray.cli import run_command

    def broken(_args):
        raise ConnectionResetError("a bug, not bad input")

    with pytest.raises(ConnectionResetError):
        run_command(broken, None)
