"""``python -m benchmarks [name ...]``: run the benchmarks (all by default) and print their ratios.

``python -m benchmarks NAME --option ...`` passes the options to that one benchmark's ``main``. The ones
in ``ON_REQUEST`` run for too long to be part of the default set (``make bench``) and run only when named.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time
from pathlib import Path

ON_REQUEST = ("scale",)
"""``scale`` runs the whole pipeline at 10× the handbook's volume: ``make bench-scale``."""


def available() -> list[str]:
    folder = Path(__file__).parent
    return sorted(
        m.name.removeprefix("bench_")
        for m in pkgutil.iter_modules([str(folder)])
        if m.name.startswith("bench_")
    )


def main(argv: list[str]) -> int:
    first_option = next((i for i, arg in enumerate(argv) if arg.startswith("-")), len(argv))
    names, options = argv[:first_option], argv[first_option:]
    names = names or [name for name in available() if name not in ON_REQUEST]
    unknown = sorted(set(names) - set(available()))
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; available: {', '.join(available())}")
        return 2
    if options and len(names) != 1:
        print(f"options ({' '.join(options)}) go to one benchmark: name it first")
        return 2
    for name in names:
        print(f"\n=== {name} ===", flush=True)
        started = time.perf_counter()
        module = importlib.import_module(f"benchmarks.bench_{name}")
        if options:
            module.main(options)
        else:
            module.main()
        print(f"--- {name} done in {time.perf_counter() - started:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
