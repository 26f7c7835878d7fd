"""Per-module and per-test times of a pytest run from its JUnit XML (`pytest --junitxml=FILE`): tests/README.md.

Usage: python3 tests/suite_times.py FILE [N]   (N slowest tests, default 30)
A test's time includes its set-up, so a module- or session-scoped fixture (a whole pipeline run) is booked on the
first test that asks for it. No dependencies beyond the standard library.
"""

import collections
import sys
import xml.etree.ElementTree as ET


def times(path):
    """[(seconds, module, test name)] of every test case in the JUnit file."""
    return [
        (float(case.get("time")), case.get("classname").split(".")[-1], case.get("name"))
        for case in ET.parse(path).iter("testcase")
    ]


def main(argv):
    path, slowest = argv[1], int(argv[2]) if len(argv) > 2 else 30
    rows = times(path)
    per_module, count = collections.Counter(), collections.Counter()
    for seconds, module, _ in rows:
        per_module[module] += seconds
        count[module] += 1
    print(f"{'seconds':>8} {'tests':>5}  module")
    for module, seconds in per_module.most_common():
        print(f"{seconds:8.1f} {count[module]:5d}  {module}")
    print(f"{sum(per_module.values()):8.1f} {len(rows):5d}  (sum of test times)")
    print(f"\n{slowest} slowest tests:")
    for seconds, module, name in sorted(rows, reverse=True)[:slowest]:
        print(f"{seconds:8.1f}  {module}::{name}")


if __name__ == "__main__":
    main(sys.argv)
