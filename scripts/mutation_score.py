"""Print the mutation score of the last `make mutation` run, per mutated file, per package and in total.

Score = killed / (killed + survived + timeouts + suspicious); mutants no test reaches ("no tests") and
mutants not run yet are counted apart. Reads mutmut's per-file results in mutants/**/*.py.meta.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code


def main() -> None:
    total = Counter()
    packages: dict[str, Counter] = {}
    rows = []
    for meta in sorted(Path("mutants").rglob("*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        if not codes:
            continue
        counts = Counter(status_by_exit_code[code] for code in codes.values())
        total.update(counts)
        name = str(meta.relative_to("mutants"))[: -len(".meta")]
        packages.setdefault(str(Path(name).parent) + "/", Counter()).update(counts)
        rows.append((name, counts))
    if not rows:
        raise SystemExit("no mutation results in mutants/: run `make mutation` first")
    print(f"{'file':45} {'killed':>7} {'survived':>8} {'timeout':>7} {'no tests':>8} {'not run':>7} {'score':>6}")
    for name, counts in [*rows, *sorted(packages.items()), ("total", total)]:
        decided = counts["killed"] + counts["survived"] + counts["timeout"] + counts["suspicious"]
        score = f"{100 * counts['killed'] / decided:.1f}%" if decided else "-"
        print(
            f"{name:45} {counts['killed']:7} {counts['survived']:8} {counts['timeout']:7} "
            f"{counts['no tests']:8} {counts['not checked']:7} {score:>6}"
        )


if __name__ == "__main__":
    main()
