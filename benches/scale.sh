#!/usr/bin/env bash
# One machine at a million secrets (issue 18): builds a ledger of N secrets with
# `sledger import` (1 event each), optionally adds UPDATES updates per secret (the full size:
# 10^6 secrets, 10^7 events), then times each command as a user runs it, with its peak RSS,
# and prints the README table. Not part of `cargo test`.
#
# Usage: benches/scale.sh [N, default 1000000] [UPDATES per secret, default 0; 9 = 10^7 events]
# Needs: a release build (`cargo build --release --bin sledger`, done here), /usr/bin/time.
set -euo pipefail
N="${1:-1000000}"
UPDATES="${2:-0}"
HERE="$(cd "$(dirname "$0")/.." && pwd)"
cargo build --release --bin sledger --manifest-path "$HERE/Cargo.toml" >&2
BIN="$HERE/target/release/sledger"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export SLEDGER_LEDGER="$WORK/ledger.db" SLEDGER_ACTOR="bench@host" SLEDGER_LOG=error
TEAMS=$(( N / 20000 > 1 ? N / 20000 : 2 ))  # about 20 000 secrets per team label

# Milliseconds and peak RSS (MiB) of one command; its output is discarded.
measure() {
  local start end
  start=$(date +%s%N)
  /usr/bin/time -f "%M" -o "$WORK/time" "$BIN" "$@" >/dev/null 2>"$WORK/stderr" || {
    echo "failed: sledger $*" >&2; cat "$WORK/stderr" >&2; exit 1; }
  end=$(date +%s%N)
  awk -v ns=$((end - start)) '{printf "%.0f %.0f\n", ns/1e6, $1/1024}' "$WORK/time"
}
# The median of 11 runs (ms) and the largest RSS.
median() {
  for _ in $(seq 1 11); do measure "$@"; done | sort -n |
    awk '{t[NR]=$1; if ($2>m) m=$2} END {printf "%s %s\n", t[6], m}'
}
row() { printf '| `%s` | %s ms | %s MiB | %s |\n' "$1" "$2" "$3" "$4"; }
per_second() { awk -v n="$1" -v ms="$2" 'BEGIN{printf "%.0f", 1000*n/ms}'; }

"$BIN" init >/dev/null
echo "# generating $N records ..." >&2
python3 - "$N" "$TEAMS" >"$WORK/secrets.jsonl" <<'EOF'
import sys, secrets
n, teams = int(sys.argv[1]), int(sys.argv[2])
out = sys.stdout
for i in range(n):
    out.write('{"name":"app/s%07d","values":{"user":"svc%d","password":"%s"},"labels":{"team":"t%d"}}\n'
              % (i, i, secrets.token_hex(16), i % teams))
EOF
echo "# import ..." >&2
read -r t m < <(measure import --file "$WORK/secrets.jsonl" --wait 0)
IMPORT="$t $m"
for u in $(seq 1 "$UPDATES"); do
  echo "# updates, round $u ..." >&2
  python3 - "$N" "$u" >"$WORK/updates.jsonl" <<'EOF'
import sys, secrets
n, u = int(sys.argv[1]), int(sys.argv[2])
for i in range(n):
    sys.stdout.write('{"name":"app/s%07d","values":{"user":"svc%d","password":"%s"},"labels":{"team":"t%d"}}\n'
                     % (i, i, secrets.token_hex(16), i % 50))
EOF
  "$BIN" import --file "$WORK/updates.jsonl" --wait 0 >/dev/null
done
MIDDLE=$(date -u +%Y-%m-%dT%H:%M:%S.000Z)
sleep 1
"$BIN" secret update app/s0000007 --value password=changed --wait 0 >/dev/null
echo "# project (catch the local sink up) ..." >&2
read -r t m < <(measure project)
PROJECT="$t $m"
EVENTS=$("$BIN" --format json log --tail 1 | python3 -c 'import json,sys; print(json.loads(sys.stdin.readline())["seq"])')
BYTES=$(du -cb "$WORK"/ledger.db* | tail -1 | cut -f1)

echo "# reads ..." >&2
echo
echo "Scale ($N secrets, $EVENTS events, $(( BYTES / EVENTS )) ledger bytes per event; release build, 2 cores):"
echo
echo "| command | time | peak RSS | note |"
echo "|---|---|---|---|"
read -r t m <<<"$IMPORT"; row "import --file ($N lines)" "$t" "$m" "$(per_second "$N" "$t") secrets/s"
read -r t m <<<"$PROJECT"; row "project (all $EVENTS events into the sqlite sink)" "$t" "$m" "$(per_second "$EVENTS" "$t") events/s"
read -r t m < <(median --version); row "--version (process start and this harness: the floor under every row)" "$t" "$m" "median of 11"
read -r t m < <(median log --limit 20); row "log --limit 20" "$t" "$m" "median of 11"
read -r t m < <(median log --tail 20); row "log --tail 20" "$t" "$m" "median of 11"
read -r t m < <(median log --type secret.renamed --tail 20); row "log --type secret.renamed --tail 20 (none match)" "$t" "$m" "median of 11"
read -r t m < <(median secret list --label team=t1 --limit 100); row "secret list --label team=t1 --limit 100" "$t" "$m" "median of 11"
MATCHES=$("$BIN" --format json secret list --label team=t1 | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
read -r t m < <(measure secret list --label team=t1); row "secret list --label team=t1 (all $MATCHES, streamed)" "$t" "$m" ""
read -r t m < <(median secret get app/s0000007 --key password); row "secret get" "$t" "$m" "median of 11"
read -r t m < <(median secret get app/s0000007 --key password --at "$MIDDLE"); row "secret get --at T" "$t" "$m" "median of 11"
i=0
create() { i=$((i + 1)); measure secret create "bench/new-$RANDOM-$i" --value k=v --wait 0; }
read -r t m < <(for _ in $(seq 1 11); do create; done | sort -n | awk '{t[NR]=$1; if ($2>m) m=$2} END {print t[6], m}')
row "secret create" "$t" "$m" "median of 11"
read -r t m < <(measure verify); row "verify" "$t" "$m" "$(per_second "$EVENTS" "$t") events/s"
read -r t m < <(measure restore --at "$MIDDLE" --dry-run); row "restore --at T --dry-run" "$t" "$m" ""
