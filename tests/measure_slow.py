"""Write tests/slow_tests.txt, the fast tier's complement, from a full run's durations.

    uv run pytest -q --durations=0 --durations-min=0 | tee /tmp/durations.log
    uv run python -m tests.measure_slow /tmp/durations.log

A test is slow when its setup, call and teardown take SLOW_S or more together (a module's engine
or image fixture counts for the test that starts it, so the rest of that module stays fast only
if it is itself fast)."""

from __future__ import annotations

import re
import sys
from collections import defaultdict
from pathlib import Path

SLOW_S = 1.0
LINE = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s+(setup|call|teardown)\s+(\S.*?)\s*$")


def slow_tests(durations_log: str) -> list[str]:
    total: dict[str, float] = defaultdict(float)
    for line in durations_log.splitlines():
        match = LINE.match(line)
        if match:
            total[match[3]] += float(match[1])
    return sorted(test for test, seconds in total.items() if seconds >= SLOW_S)


def main(log_path: str) -> None:
    tests = slow_tests(Path(log_path).read_text())
    if not tests:
        sys.exit(f"{log_path}: no durations found; run pytest with --durations=0 --durations-min=0")
    Path(__file__).with_name("slow_tests.txt").write_text("".join(f"{test}\n" for test in tests))
    print(f"{len(tests)} slow tests written to tests/slow_tests.txt")


if __name__ == "__main__":
    main(sys.argv[1])
