"""Which lines of ``quantexp`` only some tests reach: what moving them out of the default
suite (``-m slow``) would cost in coverage.

Reads the coverage data of a suite run with per-test contexts (``make coverage``: the
tests' own lines by ``--cov-context=test``, the ``run.py`` processes they start by the
context ``tests/conftest.py`` gives them) and, for the tests named on the command line
(node-id prefixes), prints the lines no other test reaches, per file, and the line
coverage of the suite with and without them. Nothing is asserted; it prints figures.

    make coverage                      # writes .cache/coverage/.coverage
    .venv/bin/python benchmarks/suite_coverage.py tests/search/test_shared_study.py \\
        tests/launch/test_sweeps.py::test_a_job_killed_by_a_segfault
"""

from __future__ import annotations

import argparse
import os
from collections import defaultdict
from pathlib import Path

from coverage import Coverage
from coverage.results import format_lines

ROOT = Path(__file__).resolve().parents[1]


def _test_of(context: str) -> str:
    # "tests/x.py::test_y[p]|run" (in-process phase) or "tests/x.py::test_y[p]" (a subprocess)
    return context.split("|", 1)[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tests", nargs="+", help="node-id prefixes of the tests to leave out")
    parser.add_argument("--data", default=os.environ.get("COVERAGE_FILE", str(ROOT / ".cache/coverage/.coverage")),
                        help="coverage data file (default: $COVERAGE_FILE or .cache/coverage/.coverage)")
    args = parser.parse_args()

    def left_out(test: str) -> bool:
        return any(test.startswith(prefix) for prefix in args.tests)

    cov = Coverage(data_file=args.data)
    cov.load()
    data = cov.get_data()
    statements = total_kept = total_all = 0
    lost: dict[str, list[int]] = defaultdict(list)
    statements_of: dict[str, list[int]] = {}
    matched: set[str] = set()
    for filename in sorted(data.measured_files()):
        try:
            _, executable, _, _, _ = cov.analysis2(filename)
        except Exception:  # noqa: BLE001 - a file that is gone or is not Python
            continue
        statements += len(executable)
        statements_of[os.path.relpath(filename)] = executable
        by_line = data.contexts_by_lineno(filename)
        for line in executable:
            tests = {_test_of(c) for c in by_line.get(line, [])}
            if not tests:
                continue
            total_all += 1
            out = {t for t in tests if t and left_out(t)}
            matched |= out
            if out and out == tests:
                lost[os.path.relpath(filename)].append(line)
            else:
                total_kept += 1
    print(f"tests left out: {len(matched)} matched the {len(args.tests)} prefix(es)")
    for name in sorted(matched):
        print(f"  {name}")
    print(f"line coverage with them:    {total_all}/{statements} = {100 * total_all / max(statements, 1):.2f} %")
    print(f"line coverage without them: {total_kept}/{statements} = {100 * total_kept / max(statements, 1):.2f} %")
    print(f"lines only they reach: {sum(len(v) for v in lost.values())}")
    for filename, lines in sorted(lost.items()):
        print(f"  {filename}: {format_lines(statements_of[filename], lines)}")  # as coverage reports them
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
