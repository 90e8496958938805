#!/usr/bin/env bash
# Process start cost of each master-key provider, beside the key file, in one run:
# `sledger secret get db --from ledger` (open, unlock, read, decrypt) as a new process, with the
# key from a file, from Transit on a local OpenBao dev server, and from KMS on a local moto.
# Needs the release binary (cargo build --release) and the test servers (cargo test --test kms
# installs them into target/test-servers/venv). Usage: benches/kms.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-30}
bin=$PWD/target/release/sledger
venv=$PWD/target/test-servers/venv/bin
tool() { if [ -x "$venv/$1" ]; then echo "$venv/$1"; else command -v "$1" || { echo "benches/kms.sh needs $1: run cargo test --test kms once, or put it on PATH" >&2; exit 1; }; fi; }
bao=$(tool bao); moto=$(tool moto_server)
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$dir"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
bao_port=$(port); moto_port=$(port)
"$bao" server -dev -dev-root-token-id=root -dev-listen-address=127.0.0.1:$bao_port >/dev/null 2>&1 &
"$moto" -H 127.0.0.1 -p $moto_port >/dev/null 2>&1 &
export VAULT_ADDR=http://127.0.0.1:$bao_port VAULT_TOKEN=root
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1
for _ in $(seq 100); do "$bao" status >/dev/null 2>&1 && break; sleep 0.2; done
for _ in $(seq 100); do curl -s http://127.0.0.1:$moto_port/moto-api/ >/dev/null && break; sleep 0.2; done
"$bao" secrets enable transit >/dev/null
"$bao" write -f transit/keys/sledger derived=true >/dev/null
key=$(curl -s -X POST http://127.0.0.1:$moto_port/ -H 'Content-Type: application/x-amz-json-1.1' \
    -H 'X-Amz-Target: TrentService.CreateKey' \
    -H 'Authorization: AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/kms/aws4_request, SignedHeaders=host, Signature=0' \
    -d '{}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["KeyMetadata"]["KeyId"])')

median_ms() { # command... ; prints the median wall time of $runs runs, in ms
    local times=()
    "$@" >/dev/null
    for _ in $(seq "$runs"); do
        local start=$(date +%s%N); "$@" >/dev/null; local end=$(date +%s%N)
        times+=($(( (end - start) / 1000 )))
    done
    printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {printf "%.1f", a[int((NR+1)/2)]/1000}'
}

echo "| master key from | \`secret get\` as a new process (median of $runs) | vs the key file |"
echo "|---|---|---|"
file_ms=""
for provider in file transit kms; do
    ledger=$dir/$provider.db
    case $provider in
        file) flags=() ;;
        transit) flags=(--master-key "vault-transit://127.0.0.1:$bao_port/transit/sledger?tls=off") ;;
        kms) flags=(--master-key "aws-kms://us-east-1/$key?endpoint=http://127.0.0.1:$moto_port") ;;
    esac
    "$bin" --ledger "$ledger" "${flags[@]}" init >/dev/null
    "$bin" --ledger "$ledger" secret create db --value password=s3cr3t --wait 0 >/dev/null
    ms=$(median_ms "$bin" --ledger "$ledger" secret get db --from ledger)
    [ -z "$file_ms" ] && file_ms=$ms
    echo "| $provider | $ms ms | $(python3 -c "print(f'{$ms/$file_ms:.2f}×')") |"
done
