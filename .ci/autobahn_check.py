"""Reads an Autobahn|Testsuite index.json and fails on any case that is not acceptable."""
import json
import sys

ACCEPTABLE = {"OK", "NON-STRICT", "INFORMATIONAL"}


def main(index_path, expected_path):
    with open(index_path) as f:
        index = json.load(f)
    with open(expected_path) as f:
        expected = json.load(f)["cases"]
    results = index["palisade"]
    counts = {}
    bad = []
    for case, result in sorted(results.items(), key=lambda kv: [int(p) for p in kv[0].split(".")]):
        behavior, close = result["behavior"], result["behaviorClose"]
        counts[behavior] = counts.get(behavior, 0) + 1
        allowed = expected.get(case, {})
        ok_behavior = behavior in ACCEPTABLE or behavior == allowed.get("behavior")
        ok_close = close in ACCEPTABLE or close == allowed.get("behaviorClose")
        if not (ok_behavior and ok_close):
            bad.append(f"{case}: behavior={behavior} close={close}")
    summary = ", ".join(f"{n} {b}" for b, n in sorted(counts.items()))
    print(f"autobahn: {len(results)} cases: {summary}")
    if len(results) < 200:
        print("autobahn: too few cases ran", file=sys.stderr)
        return 1
    for line in bad:
        print(f"autobahn: FAILED {line}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
