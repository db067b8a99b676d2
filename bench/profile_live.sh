#!/usr/bin/env bash
# Where the scorer's CPU goes at a fixed rate, with the real profilers on the real process
# (issue 12): tips.score at RATE req/s (bench/score_bench.py, one echo window then one
# tips.score window), py-spy (Python self time) then perf (native objects and symbols)
# attached to the scorer during its window; a markdown summary on stdout.
#   bench/profile_live.sh [RATE] > bench/results/score_profile_roundN.md
# Needs py-spy (.venv/bin/pip install py-spy) and perf. The profilers perturb the run: its
# latency is not a figure.
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${1:-1000}
OUT=$(mktemp -d /tmp/profile-live.XXXXXX)
.venv/bin/python bench/score_bench.py --rates "$RATE" --duration 30 --windows 1 \
  --out "$OUT/score.json" > "$OUT/bench.log" 2>&1 &
BENCH=$!
trap 'kill $BENCH 2>/dev/null || true' EXIT
PID=""
for _ in $(seq 60); do PID=$(pgrep -f "python -m scorer.main" | head -1 || true); [ -n "$PID" ] && break; sleep 1; done
[ -n "$PID" ] || { echo "no scorer process" >&2; exit 1; }
sleep 36  # the echo window (30 s) and the scorer's warm-up
.venv/bin/py-spy record -r 250 -d 12 -f raw --nonblocking -o "$OUT/spy.txt" -p "$PID" > "$OUT/spy.log" 2>&1
perf record -F 499 -g -p "$PID" -o "$OUT/perf.data" -- sleep 8 > "$OUT/perf.log" 2>&1
wait $BENCH || true
trap - EXIT
set +o pipefail  # `head` closes the reports early
echo "# Where the scorer's CPU goes (issue 12)"
echo
echo "Commit $(git rev-parse --short HEAD), $(date -u +%Y-%m-%dT%H:%MZ): \`bench/profile_live.sh $RATE\` —"
echo "\`score_bench.py --rates $RATE --duration 30 --windows 1\`; during the tips.score window"
echo "\`py-spy record -r 250 -d 12 -f raw --nonblocking\`, then \`perf record -F 499 -g -- sleep 8\`,"
echo "both on the scorer. The profilers perturb the run: its latency is not a figure."
echo
echo "## perf: the scorer's samples by object"
echo
echo "| share | object |"
echo "|---|---|"
perf report -i "$OUT/perf.data" --no-children -g none --sort dso 2>/dev/null | grep -v "^#" | grep -v "^$" | head -10 | awk '{printf "| %s | %s |\n", $1, $2}'
echo
echo "## perf: top symbols"
echo
echo "| share | object | symbol |"
echo "|---|---|---|"
perf report -i "$OUT/perf.data" --no-children -g none --sort dso,sym 2>/dev/null | grep -v "^#" | grep -v "^$" | head -20 | awk '{s=$1; d=$2; $1="";$2="";$3=""; printf "| %s | %s | %s |\n", s, d, $0}'
.venv/bin/python - "$OUT/spy.txt" <<'PY'
import collections, re, sys
tot, leaf = 0, collections.Counter()
for line in open(sys.argv[1]):
    line = line.rstrip()
    if not line:
        continue
    stack, _, n = line.rpartition(" ")
    tot += int(n)
    top = stack.split(";")[-1]
    leaf[re.sub(r" \(.*/", " (", re.sub(r":\d+\)$", ")", top))] += int(n)
print(f"\n## py-spy: self time by Python function ({tot} samples while busy)\n")
print("| share | function (file) |\n|---|---|")
for k, v in leaf.most_common(25):
    print(f"| {100 * v / tot:.1f} % | {k or '(native)'} |")
PY
rm -rf "$OUT"
