#!/usr/bin/env bash
# sledger's server beside ZenML's, in one run on this machine: the peer harness
# (../shared/peers/zenml/run.sh N: ZenML server + moto backup store, one sequential client)
# and `cargo bench --bench server` (sledger serve, 1 and 16 clients), same N and value sizes.
# Prints both sets of figures, then the README table with ratios.
# Usage: benches/vs_zenml.sh [N, default 500]   (needs ../shared/peers/zenml/setup.sh run once)
set -euo pipefail
N="${1:-500}"
HERE="$(cd "$(dirname "$0")/.." && pwd)"
# The ZenML peer harness lives outside this repository; ZPEER_DIR says where.
PEER="${ZPEER_DIR:-$HERE/../shared/peers/zenml}"
OUT="$(mktemp -d)"
cargo bench --bench server --no-run >/dev/null 2>&1
echo "# ZenML (run.sh $N) ..." >&2
# The peer's later phases (backup, outage) can fail on a slow run (its client resends a backup
# that takes over 30 s); the figures it printed before that still count, so carry on.
"$PEER/run.sh" "$N" >"$OUT/zenml.txt" 2>"$OUT/zenml.err" || echo "# ZenML's run.sh failed after $(wc -l <"$OUT/zenml.txt") figures; see $OUT/zenml.err" >&2
# The peer's server and moto may still be exiting: measure sledger on an idle machine.
for _ in $(seq 1 30); do pgrep -f "zen_server|moto_server|tcpproxy.py" >/dev/null || break; sleep 1; done
# and with the peer's dirty pages written back, so sledger's fsyncs do not pay for them.
sync
echo "# sledger (cargo bench --bench server, N=$N) ..." >&2
SLEDGER_BENCH_N="$N" cargo bench --bench server 2>/dev/null | grep '^sledger_' >"$OUT/sledger.txt"
cat "$OUT/zenml.txt" "$OUT/sledger.txt"
fig() { awk -v k="$2" '$1==k {print $2}' "$OUT/$1.txt"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b>0) printf "%.1f×", a/b; else print "-" }'; }
echo
echo "| figure (N=$N, 3 keys × 32 hex chars) | ZenML 0.98 (1 client) | sledger, 1 client | sledger, 16 clients | ratio 1 client / 16 clients |"
echo "|---|---|---|---|---|"
for p in create read_by_name update; do
  z=$(fig zenml "${p}_rate"); s1=$(fig sledger "sledger_${p}_rate_c1"); s16=$(fig sledger "sledger_${p}_rate_c16")
  echo "| ${p} rate (secrets/s) | $z | $s1 (p50 $(fig sledger "sledger_${p}_p50_c1") ms, p99 $(fig sledger "sledger_${p}_p99_c1") ms) | $s16 (p50 $(fig sledger "sledger_${p}_p50_c16") ms, p99 $(fig sledger "sledger_${p}_p99_c16") ms) | $(ratio "$s1" "$z") / $(ratio "$s16" "$z") |"
done
zr=$(fig zenml server_peak_rss); sr=$(fig sledger sledger_server_peak_rss)
echo "| server peak RSS (MiB) | $zr | $sr | (same process) | $(awk -v a="$sr" -v b="$zr" 'BEGIN{printf "%.1f %%", 100*a/b}') |"
grep -q '^create_rate' "$OUT/zenml.txt" && rm -rf "$OUT"
