"""Start-up time of the ``vit-zoo`` command and of ``import vit_zoo``, each in fresh interpreters.

    python benchmarks/bench_startup.py [--rounds 5]

Prints the median and the fastest of ``--rounds`` runs per case (commands interleaved, so a load change on
a shared machine hits all of them alike). The target for ``--help``, ``list`` and argument errors is 0.5 s.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

PYTHON = sys.executable
CLI = [PYTHON, "-c", "import sys; from vit_zoo.cli import main; sys.exit(main())"]  # what the console script runs
CASES = {
    "python (bare interpreter)": [PYTHON, "-c", "pass"],
    "import vit_zoo": [PYTHON, "-c", "import vit_zoo"],
    "vit-zoo --help": [*CLI, "--help"],
    "vit-zoo list": [*CLI, "list"],
    "vit-zoo convert (argument error)": [*CLI, "convert"],
    "import vit_zoo, timm": [PYTHON, "-c", "import vit_zoo, timm"],
    "import vit_zoo; from transformers import AutoModel": [PYTHON, "-c", "import vit_zoo; from transformers import AutoModel"],
}


def time_once(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "COLUMNS": "80"})
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    times: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(args.rounds):
        for name, command in CASES.items():
            times[name].append(time_once(command))
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"load average {os.getloadavg()[0]:.1f}, {args.rounds} rounds"
    )
    print(f"{'case':<52} {'median s':>9} {'min s':>7}")
    for name, values in times.items():
        print(f"{name:<52} {statistics.median(values):>9.2f} {min(values):>7.2f}")
    return times


if __name__ == "__main__":
    main()
