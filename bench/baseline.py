"""Regression check: this tree against an earlier revision, whole process, interleaved in one run.

    python bench/run.py --baseline ecfff93          # the previous release
    python bench/run.py --baseline ecfff93 --repeat 7 --scale 0.5

The revision is built once into ~/.cache/streamer-bench/baseline/<sha>/ (outside the tree: no linter or
test run walks into it) (`git archive` of it, a venv, `pip install`
with that revision's constraints.txt, native tokenizer included; pip's cache is reused), then both sides
run the same generated files as `streamer replay --output json`, each run its own child of this process,
alternating which side goes first (ABBA), with the same environment and working directory.

Method (after Vector's regression detector): interleaved runs so that both sides see the same load;
the row's ratio is today ÷ REV of the medians (throughput for the time rows, so above 1.0 is faster);
its spread is the range of the per-round ratios; a row whose ratio is below 0.95 is flagged; a side
whose coefficient of variation exceeds 10% makes the row "erratic" (re-run it before believing it).
Whole-process CPU (user + sys of the child, from wait4) is steadier than wall time on a shared machine.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "streamer-bench" / "baseline"

#: a row more than this far below 1.0 is flagged
TOLERANCE = 0.05
#: a side whose runs vary more than this (stdev / mean) makes its row erratic
ERRATIC_CV = 0.10


@dataclasses.dataclass(frozen=True)
class Run:
    wall: float
    cpu: float  # user + sys of the whole child process
    user: float
    sys: float
    rss_mib: float
    stdout: bytes


def git(*argv: str) -> str:
    return subprocess.run(["git", *argv], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


def build(rev: str) -> Path:
    """REV's interpreter: a venv with REV installed (not editable, native part built), made once per commit."""
    sha = git("rev-parse", "--verify", f"{rev}^{{commit}}")
    home = CACHE / sha
    python = home / "venv" / "bin" / "python"
    done = home / ".built"
    if done.exists() and python.exists():
        return python
    shutil.rmtree(home, ignore_errors=True)
    src = home / "src"
    src.mkdir(parents=True)
    print(f"building {rev} ({sha[:12]}) into {home} ...", file=sys.stderr, flush=True)
    archive = subprocess.run(["git", "archive", sha], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    subprocess.run([sys.executable, "-m", "venv", str(home / "venv")], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    constraints = ["-c", str(src / "constraints.txt")] if (src / "constraints.txt").exists() else []
    installed = subprocess.run([*pip, *constraints, str(src)], capture_output=True, text=True)
    if installed.returncode != 0:  # pip's chatter only when it failed
        raise SystemExit(f"installing {rev} failed:\n{installed.stdout}{installed.stderr}")
    # no tokenizer means a baseline at half speed: refuse rather than compare against it
    subprocess.run([str(python), "-c", "import streamer.decode._scan"], cwd=tempfile.gettempdir(), check=True)
    done.touch()
    return python


def run_once(argv: list[str], env: dict[str, str], cwd: str) -> Run:
    """One child: wall time, and CPU and peak RSS of that child alone (wait4)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): {err.read().decode(errors='replace')}")
        out.seek(0)
        return Run(wall, usage.ru_utime + usage.ru_stime, usage.ru_utime, usage.ru_stime, usage.ru_maxrss / 1024, out.read())


@dataclasses.dataclass
class Side:
    name: str
    python: str
    env: dict[str, str]


def sides(rev: str) -> tuple[Side, Side]:
    """Today (this tree, on PYTHONPATH) and REV (its venv); the same environment otherwise. Both read
    compiled bytecode: REV's install wrote it, and PYTHONDONTWRITEBYTECODE (set on some machines) would
    make today compile every module at every start (50 ms of a 300 ms start)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE")}
    return Side("today", sys.executable, {**env, "PYTHONPATH": str(ROOT)}), Side(rev, str(build(rev)), env)


@dataclasses.dataclass
class Pairs:
    """One row's runs, side by side, in the order they ran."""

    label: str
    today: list[Run] = dataclasses.field(default_factory=list)
    base: list[Run] = dataclasses.field(default_factory=list)


def interleave(label: str, args: list[str], today: Side, base: Side, repeat: int, cwd: str) -> Pairs:
    got = Pairs(label)
    for side in (today, base):  # a run each, not counted: bytecode written, the file in the page cache
        run_once([side.python, "-m", "streamer", *args], side.env, cwd)
    for i in range(repeat):
        order = (today, base) if i % 2 == 0 else (base, today)  # ABBA: neither side always runs warm
        for side in order:
            run = run_once([side.python, "-m", "streamer", *args], side.env, cwd)
            (got.today if side is today else got.base).append(run)
    return got


def cv(values: list[float]) -> float:
    return statistics.stdev(values) / statistics.mean(values) if len(values) > 1 else 0.0


@dataclasses.dataclass(frozen=True)
class Row:
    label: str
    unit: str
    today: list[float]
    base: list[float]
    lower_is_better: bool = True

    def ratios(self) -> list[float]:
        """Per-round ratios, oriented so that above 1.0 means today is better (faster, smaller)."""
        pairs = zip(self.today, self.base, strict=True)
        return [b / t if self.lower_is_better else t / b for t, b in pairs]

    def ratio(self) -> float:
        t, b = statistics.median(self.today), statistics.median(self.base)
        return b / t if self.lower_is_better else t / b

    def verdict(self) -> str:
        erratic = max(cv(self.today), cv(self.base)) > ERRATIC_CV
        if self.ratio() < 1 - TOLERANCE:
            return "REGRESSED" + (" (erratic)" if erratic else "")
        return "erratic" if erratic else "ok"

    def line(self) -> str:
        ratios = self.ratios()
        span = f"{min(ratios):.2f}–{max(ratios):.2f}"
        t, b = self.today, self.base
        sides = f"{min(t):.2f}–{max(t):.2f} / {min(b):.2f}–{max(b):.2f} {self.unit}"
        return f"| {self.label} | {self.ratio():.2f} | {span} | {sides} | {self.verdict()} |"


def rows_of(pairs: Pairs, wall: bool = True) -> list[Row]:
    out = [Row(f"{pairs.label}, CPU", "s", [r.cpu for r in pairs.today], [r.cpu for r in pairs.base])]
    if wall:
        out.append(Row(f"{pairs.label}, wall", "s", [r.wall for r in pairs.today], [r.wall for r in pairs.base]))
    return out


def same_counts(pairs: Pairs) -> str | None:
    """Both sides must count the same records per interface; a faster wrong answer is no win."""
    import json

    keys = ("records", "interfaces", "log_status", "errors")
    t, b = (json.loads(runs[0].stdout) for runs in (pairs.today, pairs.base))
    differ = [k for k in keys if t.get(k) != b.get(k)]
    return f"{pairs.label}: the two sides' {', '.join(differ)} differ" if differ else None


def compare(rev: str, files: dict[str, Path], one_line: Path, repeat: int, log: Callable[[str], None]) -> list[str]:
    """Run every row, interleaved; the report's lines (a Markdown table, then notes)."""
    today, base = sides(rev)
    rows: list[Row] = []
    notes: list[str] = []
    rss: dict[str, tuple[list[float], list[float]]] = {}
    with tempfile.TemporaryDirectory() as cwd:  # neither side may import streamer from the working directory
        runs: dict[str, Pairs] = {}
        for name, path in files.items():
            log(f"{name}: replay --output json, {repeat} runs each, interleaved")
            runs[name] = interleave(f"{name} whole process", ["replay", "--output", "json", str(path)], today, base, repeat, cwd)
        first = next(iter(files))
        log(f"{first}: replay --output json --no-insights")
        runs["off"] = interleave(
            f"{first} --no-insights", ["replay", "--output", "json", "--no-insights", str(files[first])], today, base, repeat, cwd
        )
        log("cold start: replay of a one-line file")
        runs["cold"] = interleave(
            "cold start, one-line replay", ["replay", "--output", "json", str(one_line)], today, base, 2 * repeat, cwd
        )
    for pairs in runs.values():
        rows.extend(rows_of(pairs))
        if (problem := same_counts(pairs)) is not None:
            notes.append(f"COUNTS DIFFER: {problem}")
        rss[pairs.label] = ([r.rss_mib for r in pairs.today], [r.rss_mib for r in pairs.base])
    for label, (t, b) in rss.items():
        if label.startswith("cold"):
            continue
        rows.append(Row(f"{label}, peak RSS", "MiB", t, b))
    on, off = runs[first], runs["off"]
    for side, a, z in (("today", on.today, off.today), (rev, on.base, off.base)):
        share = 1 - statistics.median(r.cpu for r in z) / statistics.median(r.cpu for r in a)
        sys_on = statistics.median(r.sys for r in a)
        notes.append(f"{side}: insights + pairing {100 * share:.0f}% of {first}'s whole-process CPU; sys time {sys_on:.2f} s")
    header = [
        f"today ({git('rev-parse', '--short', 'HEAD')}{'+dirty' if git('status', '--porcelain', '--untracked-files=no') else ''})"
        f" ÷ {rev}: above 1.0 is better (faster, smaller); {repeat} interleaved runs per side",
        "",
        f"| row | today ÷ {rev} (medians) | spread (per-round ratios) | today / {rev} (range) | verdict |",
        "|---|---|---|---|---|",
    ]
    return [*header, *(r.line() for r in rows), "", *notes]
