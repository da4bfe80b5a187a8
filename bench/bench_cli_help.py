"""How long `dapo --help` and `dapo <command> --help` take, against the interpreter starting and exiting.

Each command runs as a fresh `python -m dapo.cli ...` process, `--runs` times, interleaved with the
baseline `python -c pass`; prints the median wall time of each and what the CLI adds to the baseline.

    .venv/bin/python bench/bench_cli_help.py [--runs 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python -c pass (baseline)": ["-c", "pass"],
    "dapo --help": ["-m", "dapo.cli", "--help"],
    "dapo rollout --help": ["-m", "dapo.cli", "rollout", "--help"],
    "dapo trainer --help": ["-m", "dapo.cli", "trainer", "--help"],
    "dapo run --help": ["-m", "dapo.cli", "run", "--help"],
}


def wall_s(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    runs = parser.parse_args().runs
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(runs):
        for name, args in COMMANDS.items():
            times[name].append(wall_s(args))
    baseline = statistics.median(times["python -c pass (baseline)"])
    print(f"| command | median wall, s ({runs} runs) | added to the baseline, s |")
    print("|---|---|---|")
    for name, measured in times.items():
        median = statistics.median(measured)
        print(f"| {name} | {median:.3f} | {median - baseline:+.3f} |")


if __name__ == "__main__":
    main()
