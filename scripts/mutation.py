"""Mutation testing of the method's code with mutmut 3; prints the score per module.

    .venv/bin/python scripts/mutation.py                 # every module of pyproject's table
    .venv/bin/python scripts/mutation.py noise objective # some of them
    .venv/bin/python scripts/mutation.py --survivors noise  # only the last run's survivors
    .venv/bin/python scripts/mutation.py train.resume --mutants "*TrainingState*"  # a subset
    make mutation MODULES="noise"                        # the same through make

Each module (``[tool.videofusion.mutation.modules]`` in pyproject.toml) is mutated in its own
scratch copy of ``src/`` and ``tests/`` under ``build/mutation/<module>/``, with a generated
``setup.cfg`` that makes mutmut mutate that one file and run only the tests listed for it
(mutmut then runs, for each mutant, only those of them that call the mutated function). One
worker, one thread: it is meant for a shared 2-core machine, not for CI. Results stay in the
scratch folder: ``cd build/mutation/<module> && mutmut show <mutant>`` shows a survivor's diff.

Score = killed / (all mutants run - skipped), as mutmut's badge computes it; timeouts count as
killed. Suspicious (a test crashed in an unexpected way) and survived mutants count against it.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
SCRATCH = ROOT / "build" / "mutation"
PACKAGE = Path("src") / "videofusion"


# A survivor runs all its tests (up to about 2.5x their recorded time on a loaded machine);
# a timeout counts as killed, so the limit must stay above that
TIMEOUT_MULTIPLIER = 4


def load_table() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["videofusion"]["mutation"]


def prepare(name: str, spec: dict, common: list[str]) -> Path:
    work = SCRATCH / name
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    shutil.copytree(ROOT / "src", work / "src",
                    ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    shutil.copytree(ROOT / "tests", work / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    # some tests run the project's scripts (e.g. tests/test_safety.py the checkpoint migration)
    # or read its configs (tests/test_factory.py the physics model's widths)
    for folder in ("scripts", "configs"):
        shutil.copytree(ROOT / folder, work / folder, ignore=shutil.ignore_patterns("__pycache__"))
    target = (PACKAGE / spec["file"]).as_posix()

    def lines(values):
        return "\n    " + "\n    ".join(values)

    (work / "setup.cfg").write_text(
        "[mutmut]\n"
        f"source_paths = {PACKAGE.as_posix()}\n"
        f"only_mutate = {target}\n"
        f"pytest_add_cli_args = {lines(common)}\n"
        f"pytest_add_cli_args_test_selection = {lines(spec['tests'])}\n"
        "also_copy = \n    scripts\n    configs\n"
        "process_isolation = fork\n"
        # mutmut's wall-clock limit is (the tests' recorded time + 1 s) x this; its default 15
        # gave the training tests' mutants that loop forever 25-50 minutes each
        f"timeout_multiplier = {TIMEOUT_MULTIPLIER}\n"
        "use_git_change_detection = false\n"
    )
    # pytest's rootdir and conftest must be the scratch copy's, not the checkout's
    (work / "pytest.ini").write_text("[pytest]\ntestpaths = tests\naddopts = -q\n")
    return work


def mutmut(work: Path, *args: str, capture: bool = False,
           tests: list[str] = ()) -> subprocess.CompletedProcess:
    # mutmut puts mutants/src first on sys.path itself (before the editable install's path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           # mutmut hands pytest a set of tests; tests/conftest.py runs them in the table's order
           "VIDEOFUSION_TEST_ORDER": ",".join(tests),
           # no progress bars where a test does not ask for one (tests/conftest.py also gives
           # tqdm a per-process lock: forked test processes hung on a shared one)
           "TQDM_DISABLE": "1"}
    env.pop("PYTHONPATH", None)
    exe = Path(sys.executable).with_name("mutmut")
    return subprocess.run([str(exe), *args], cwd=work, env=env, text=True,
                          capture_output=capture)


def results(work: Path) -> dict[str, str]:
    out = mutmut(work, "results", "--all", "true", capture=True).stdout
    found = {}
    for line in out.splitlines():
        match = re.match(r"\s*(\S+): (.+)$", line)
        if match:
            found[match.group(1)] = match.group(2).strip()
    return found


def share_module_fixture_calls(path: Path) -> None:
    """What tests/conftest.py does for new runs, for a run's saved test map: a function called by
    any test of a file counts as called by every test of that file (module-scoped fixtures)."""
    data = json.loads(path.read_text())
    by_file: dict[str, set[str]] = {}
    for test in data["duration_by_test"]:
        by_file.setdefault(test.split("::")[0], set()).add(test)
    data["tests_by_mangled_function_name"] = {
        name: sorted(set().union(*(by_file.get(t.split("::")[0], {t}) for t in tests)))
        for name, tests in data["tests_by_mangled_function_name"].items()}
    path.write_text(json.dumps(data))


def score(statuses: dict[str, str]) -> tuple[float, Counter]:
    counts = Counter(statuses.values())
    tested = sum(counts.values()) - counts["skipped"] - counts["not checked"]
    killed = counts["killed"] + counts["timeout"]
    return (100.0 * killed / tested if tested else 0.0), counts


def main() -> None:
    table = load_table()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help=f"default: all of {sorted(table['modules'])}")
    parser.add_argument("--report-only", action="store_true",
                        help="print the scores of the last run without running again")
    parser.add_argument("--survivors", action="store_true",
                        help="re-run only the last run's surviving mutants, with the checkout's "
                             "current tests copied into the scratch copy")
    parser.add_argument("--mutants", nargs="+", metavar="GLOB",
                        help="run (and score) only the mutants matching these globs instead of "
                             "the module's table entry, e.g. a function changed since its run")
    args = parser.parse_args()
    modules = args.modules or list(table["modules"])
    unknown = [m for m in modules if m not in table["modules"]]
    if unknown:
        parser.error(f"unknown module(s) {unknown}; known: {sorted(table['modules'])}")
    rows = []
    for name in modules:
        spec = dict(table["modules"][name])
        if args.mutants:
            spec["mutants"] = args.mutants
        work = SCRATCH / name
        started = time.monotonic()
        if args.survivors and not args.report_only:
            survivors = sorted(k for k, v in results(work).items() if v == "survived")
            for tests in (work / "tests", work / "mutants" / "tests"):
                shutil.copytree(ROOT / "tests", tests, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("__pycache__"))
            share_module_fixture_calls(work / "mutants" / "mutmut-stats.json")
            print(f"== {name}: re-running {len(survivors)} surviving mutants", flush=True)
            if survivors:
                mutmut(work, "run", "--max-children", "1", *survivors, tests=spec["tests"])
        elif not args.report_only:
            work = prepare(name, spec, table["common_pytest_args"])
            print(f"== {name}: mutating src/videofusion/{spec['file']}", flush=True)
            mutmut(work, "run", "--max-children", "1", *spec.get("mutants", []),
                   tests=spec["tests"])
        seconds = time.monotonic() - started
        statuses = results(work)
        if spec.get("mutants"):
            statuses = {k: v for k, v in statuses.items()
                        if any(fnmatch.fnmatch(k, p) for p in spec["mutants"])}
        percent, counts = score(statuses)
        survivors = sorted(k for k, v in statuses.items()
                           if v not in ("killed", "timeout", "skipped", "not checked"))
        rows.append((name, percent, counts, seconds, survivors))
        print(f"== {name}: {percent:.1f}% {dict(counts)} in {seconds:.0f} s", flush=True)
    print("\nmodule                 score   killed  survived  other   seconds")
    for name, percent, counts, seconds, _ in rows:
        other = sum(counts.values()) - counts["killed"] - counts["timeout"] - counts["survived"]
        print(f"{name:22} {percent:5.1f}%  {counts['killed'] + counts['timeout']:6d}  "
              f"{counts['survived']:8d}  {other:5d}  {seconds:8.0f}")
    for name, _, _, _, survivors in rows:
        if survivors:
            print(f"\n{name} survivors ({len(survivors)}):")
            for mutant in survivors:
                print(f"  {mutant}: {results(SCRATCH / name)[mutant]}")


if __name__ == "__main__":
    main()
