"""``cl-report``: summarise the results.json files of runs (tables; plots come with sweeps)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def find_results(paths: list[str]) -> list[Path]:
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_file() and p.name == "results.json":
            found.append(p)
        elif p.is_dir():
            found.extend(sorted(p.rglob("results.json")))
    return found


def main(argv: list[str] | None = None) -> int:
    """Print a Markdown table of the final metrics of every run under the given paths."""
    ap = argparse.ArgumentParser(prog="cl-report", description=__doc__)
    ap.add_argument("paths", nargs="*", default=["outputs", "multirun"], help="run or sweep dirs")
    args = ap.parse_args(argv)
    files = find_results(args.paths)
    if not files:
        print("no runs")
        return 0
    cols = ["avg_acc", "avg_incremental_acc", "forgetting", "bwt", "fwt"]
    print("| run | stream | strategy | status | " + " | ".join(cols) + " |")
    print("|" + "---|" * (4 + len(cols)))
    for f in files:
        try:
            r = json.loads(f.read_text())
        except (OSError, ValueError) as e:
            print(f"skipping {f}: {e}", file=sys.stderr)
            continue
        m = r.get("metrics", {})
        vals = " | ".join("-" if m.get(c) is None else f"{m[c]:.4f}" for c in cols)
        strat = r.get("config", {}).get("strategy", {}).get("name", "?")
        print(f"| {f.parent} | {r['stream']['name']} | {strat} | {r['run']['status']} | {vals} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
