"""Per-socket heap breakdown of a massif profile: the bytes live at one snapshot, by site.

Each leaf of the snapshot's heap tree is attributed to the first frame (walking out from
malloc) in a known crate, with the first frame in Palisade's own code beside it, and divided by
the number of sockets held. BENCHMARKS.md ("Idle sockets") says how the profile is taken.

Usage: python3 bench/scripts/massif_breakdown.py massif.out SNAPSHOT SOCKETS [BASELINE_SNAPSHOT]
"""
import re, sys
from collections import defaultdict


def snapshots(path):
    text = open(path).read()
    for block in text.split("#-----------\nsnapshot=")[1:]:
        n = int(block.split("\n", 1)[0])
        yield n, block

def tree(block):
    lines = block.split("\n")
    start = next(i for i, l in enumerate(lines) if l.startswith("heap_tree="))
    nodes = []
    for line in lines[start + 1:]:
        m = re.match(r"( *)n(\d+): (\d+) (.*)", line)
        if not m:
            continue
        nodes.append((len(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4)))
    return nodes

def leaves(nodes):
    stack = []
    for depth, children, size, label in nodes:
        stack = stack[:depth]
        stack.append(label)
        if children == 0:
            yield size, list(stack)

QUALIFIED = re.compile(r"(palisade|tokio|hyper|hyper_util|fastwebsockets|governor|dashmap|futures_\w+|tracing\w*|redis|bytes)::")

def site(path):
    first = None
    for frame in path[1:]:
        fn = re.sub(r"^0x[0-9A-F]+: ", "", frame)
        if "below massif's threshold" in fn:
            return "(small sites)"
        if first is None and QUALIFIED.search(fn):
            first = fn.split(" (")[0][:90]
        if "palisade::" in fn or "palisade_bench" in fn:
            own = fn.split(" (")[0][:90]
            return own if first is None or first == own else f"{first}  <-  {own}"
    return first or re.sub(r"^0x[0-9A-F]+: ", "", path[-1])[:150]

def sizes(path, n):
    for k, block in snapshots(path):
        if k == n:
            if "heap_tree=empty" in block or "heap_tree=peak" not in block and "heap_tree=detailed" not in block:
                sys.exit(f"snapshot {n} is not detailed")
            out = defaultdict(int)
            for size, p in leaves(tree(block)):
                out[site(p)] += size
            total = int(re.search(r"mem_heap_B=(\d+)", block).group(1))
            extra = int(re.search(r"mem_heap_extra_B=(\d+)", block).group(1))
            return out, total, extra
    sys.exit(f"no snapshot {n}")

path, n, sockets = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
out, total, extra = sizes(path, n)
if len(sys.argv) > 4:
    base, btotal, bextra = sizes(path, int(sys.argv[4]))
    for k, v in base.items():
        out[k] -= v
    total -= btotal; extra -= bextra
print(f"heap {total / sockets:.0f} B/socket useful, {extra / sockets:.0f} B/socket malloc overhead")
for k, v in sorted(out.items(), key=lambda kv: -kv[1]):
    if abs(v) / sockets >= 16:
        print(f"{v / sockets:8.0f}  {k}")
