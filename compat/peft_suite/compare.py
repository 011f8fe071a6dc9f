"""Compare a run of PEFT's tests on Hugging Face PEFT with the same run on peftkit (through the shim).

Reads the two JUnit XML files ``run.sh`` writes and prints, in Markdown:

- how many of the selected cases real PEFT passes, and of those how many pass on peftkit;
- the cases left out because the test reads a PEFT internal the shim does not map
  (``ReadsPeftInternals``) or uses a LoRA variant peftkit does not implement;
- the remaining failures grouped by cause: the cause table in ``causes.toml`` (first match of a
  regular expression against the failure text wins), each with its count and its documented reason.

Usage: ``python compare.py BASELINE.xml PEFTKIT.xml [--causes causes.toml] [--unmatched N]``
"""

from __future__ import annotations

import argparse
import re
import sys
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from pathlib import Path

import tomllib

HERE = Path(__file__).parent


def outcomes(path: Path) -> dict[str, tuple[str, str]]:
    """Case id -> (outcome, failure text) from a JUnit XML file; outcome is passed/failed/skipped."""
    result: dict[str, tuple[str, str]] = {}
    for case in ET.parse(path).iter("testcase"):
        case_id = f"{case.get('classname')}::{case.get('name')}"
        failure = case.find("failure")
        if failure is None:
            failure = case.find("error")
        if failure is not None:
            result[case_id] = ("failed", f"{failure.get('message', '')}\n{failure.text or ''}")
        elif case.find("skipped") is not None:
            result[case_id] = ("skipped", "")
        else:
            result[case_id] = ("passed", "")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("baseline", type=Path)
    parser.add_argument("peftkit", type=Path)
    parser.add_argument("--causes", type=Path, default=HERE / "causes.toml")
    parser.add_argument("--unmatched", type=int, default=0, help="print this many unmatched failures in full")
    args = parser.parse_args(argv)

    causes = tomllib.loads(args.causes.read_text())["cause"]
    patterns = [(c, re.compile(c["match"], re.S)) for c in causes]
    base, ours = outcomes(args.baseline), outcomes(args.peftkit)
    applicable = [k for k, (o, _) in base.items() if o == "passed"]

    counts: Counter[str] = Counter()
    unmatched: list[tuple[str, str]] = []
    passed = 0
    for case_id in applicable:
        outcome, text = ours.get(case_id, ("missing", ""))
        if outcome == "passed":
            passed += 1
            continue
        if outcome == "skipped":
            counts["skipped on peftkit"] += 1
            continue
        for cause, pattern in patterns:
            if pattern.search(text):
                counts[cause["name"]] += 1
                break
        else:
            counts["(unmatched)"] += 1
            unmatched.append((case_id, text))

    kinds = {c["name"]: c["kind"] for c in causes}
    by_kind: dict[str, list[str]] = defaultdict(list)
    for name in counts:
        by_kind[kinds.get(name, "unexplained")].append(name)
    out_of_scope = sum(counts[n] for n in by_kind["out of scope"])
    scored = len(applicable) - out_of_scope
    print(f"selected cases real PEFT passes: {len(applicable)}")
    print(f"left out (read PEFT internals, or LoRA variants peftkit lacks): {out_of_scope}")
    print(f"**applicable: {scored}; pass on peftkit: {passed} ({100 * passed / max(scored, 1):.1f}%)**\n")
    reasons = {c["name"]: c["reason"] for c in causes}
    for kind in ("out of scope", "difference", "unexplained"):
        names = sorted(by_kind.get(kind, []), key=lambda n: -counts[n])
        if not names:
            continue
        print(f"\n| {kind} | cases | why |\n|---|---|---|")
        for name in names:
            print(f"| {name} | {counts[name]} | {reasons.get(name, 'not yet explained')} |")
    for case_id, text in unmatched[: args.unmatched]:
        print(f"\n--- {case_id}\n{text[-3000:]}")
    return 1 if by_kind.get("unexplained") else 0


if __name__ == "__main__":
    sys.exit(main())
