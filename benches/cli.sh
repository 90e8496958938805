#!/usr/bin/env bash
# The speed of a CLI process (issue 14: `secret get` ≤ 5 ms and `secret create` ≤ 8 ms median,
# whole processes): hyperfine runs each command as a new process of the release build, on a
# ledger of N secrets with its default sqlite sink, beside `sledger --version` (loading the
# binary and exiting: the floor under every row) and `/bin/true` (the machine's process floor),
# in one run. Prints the README's rows. Not part of `cargo test`.
#
# Usage: benches/cli.sh [N, default 1000]
# Needs: hyperfine (Debian's package), python3, a release build (done here).
set -euo pipefail
N="${1:-1000}"
HERE="$(cd "$(dirname "$0")/.." && pwd)"
cargo build --release --bin sledger --manifest-path "$HERE/Cargo.toml" >&2
BIN="$HERE/target/release/sledger"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export SLEDGER_LEDGER="$WORK/ledger.db" SLEDGER_ACTOR="bench@host" SLEDGER_LOG=error

"$BIN" init >/dev/null
python3 - "$N" >"$WORK/secrets.jsonl" <<'EOF'
import sys, secrets
for i in range(int(sys.argv[1])):
    sys.stdout.write('{"name":"app/s%07d","values":{"user":"svc%d","password":"%s"},"labels":{"team":"t%d"}}\n'
                     % (i, i, secrets.token_hex(16), i % 20))
EOF
"$BIN" import --file "$WORK/secrets.jsonl" >/dev/null
"$BIN" secret create bench/new --value k=v >/dev/null

hyperfine -N --warmup 5 --runs 50 --export-json "$WORK/reads.json" \
  "/bin/true" \
  "$BIN --version" \
  "$BIN secret get app/s0000007" \
  "$BIN secret get app/s0000007 --key password" \
  "$BIN secret list --limit 100" >&2
# Each create is timed alone: its prepare step deletes the secret the last one made (a create
# of a deleted secret's name makes a new secret, as a first create does).
hyperfine -N --warmup 5 --runs 50 --export-json "$WORK/writes.json" \
  --prepare "$BIN secret delete bench/new --wait 0" \
  "$BIN secret create bench/new --value k=v" \
  "$BIN secret create bench/new --value k=v --wait 0" >&2

python3 - "$BIN" "$WORK/reads.json" "$WORK/writes.json" <<'EOF'
import json, sys
binary = sys.argv[1]
for r in [r for f in sys.argv[2:] for r in json.load(open(f))["results"]]:
    command = r["command"].replace(binary, "sledger")
    print("| `%s` | %.1f ms | %.1f ms (user %.1f, system %.1f) |"
          % (command, r["median"] * 1e3, r["mean"] * 1e3, r["user"] * 1e3, r["system"] * 1e3))
EOF
