#!/usr/bin/env bash
# Process start cost of each master-key provider, beside the key file, in one run:
# `sledger secret get db --from ledger` (open, unlock, read, decrypt) as a new process, with the
# key from a file, from Transit on a local OpenBao dev server, from KMS on a local moto, from
# Cloud KMS on a local drongo, and from a Key Vault key on the in-repo fake (over TLS, with its
# token endpoint).
# Needs the release binary (cargo build --release) and the test servers (cargo test --test kms
# installs them into target/test-servers/venv). Usage: benches/kms.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-30}
bin=$PWD/target/release/sledger
venv=$PWD/target/test-servers/venv/bin
tool() { if [ -x "$venv/$1" ]; then echo "$venv/$1"; else command -v "$1" || { echo "benches/kms.sh needs $1: run cargo test --test kms once, or put it on PATH" >&2; exit 1; }; fi; }
bao=$(tool bao); moto=$(tool moto_server); drongo=$(tool drongo)
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$dir"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
bao_port=$(port); moto_port=$(port); drongo_port=$(port); azure_port=$(port)
"$bao" server -dev -dev-root-token-id=root -dev-listen-address=127.0.0.1:$bao_port >/dev/null 2>&1 &
"$moto" -H 127.0.0.1 -p $moto_port >/dev/null 2>&1 &
"$drongo" server --host 127.0.0.1 --port $drongo_port >/dev/null 2>&1 &
# The Key Vault fake's certificate, signed by a CA of its own (as tests/common/azure.rs makes it).
ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
(cd "$dir" && openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.pem -days 2 -subj "/CN=sledger bench CA" 2>/dev/null \
    && openssl req "${ec[@]}" -keyout server.key -out server.csr -subj /CN=127.0.0.1 2>/dev/null \
    && printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >ext.cnf \
    && openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile ext.cnf 2>/dev/null)
python3 tests/fake/azure_keyvault.py $azure_port "$dir/server.pem" "$dir/server.key" bench-tenant bench-client bench-secret >/dev/null 2>&1 &
export VAULT_ADDR=http://127.0.0.1:$bao_port VAULT_TOKEN=root
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1
for _ in $(seq 100); do "$bao" status >/dev/null 2>&1 && break; sleep 0.2; done
for _ in $(seq 100); do curl -s http://127.0.0.1:$moto_port/moto-api/ >/dev/null && break; sleep 0.2; done
for _ in $(seq 100); do curl -s http://127.0.0.1:$drongo_port/drongo/health >/dev/null && break; sleep 0.2; done
for _ in $(seq 100); do curl -s --cacert "$dir/ca.pem" https://127.0.0.1:$azure_port/health >/dev/null && break; sleep 0.2; done
gcp_key=projects/bench/locations/global/keyRings/ledgers/cryptoKeys/master
curl -s -X POST "http://127.0.0.1:$drongo_port/v1/projects/bench/locations/global/keyRings?keyRingId=ledgers" -d '{}' >/dev/null
curl -s -X POST "http://127.0.0.1:$drongo_port/v1/projects/bench/locations/global/keyRings/ledgers/cryptoKeys?cryptoKeyId=master" \
    -d '{"purpose": "ENCRYPT_DECRYPT"}' >/dev/null
export AZURE_TENANT_ID=bench-tenant AZURE_CLIENT_ID=bench-client AZURE_CLIENT_SECRET=bench-secret \
    AZURE_AUTHORITY_HOST=https://127.0.0.1:$azure_port
azure_token=$(curl -s --cacert "$dir/ca.pem" -X POST "https://127.0.0.1:$azure_port/bench-tenant/oauth2/v2.0/token" \
    -d "grant_type=client_credentials&client_id=bench-client&client_secret=bench-secret&scope=https://vault.azure.net/.default" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
curl -s --cacert "$dir/ca.pem" -X POST "https://127.0.0.1:$azure_port/keys/master/create?api-version=7.5" \
    -H "Authorization: Bearer $azure_token" -H 'Content-Type: application/json' -d '{"kty": "RSA"}' >/dev/null
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
for provider in file transit kms gcp-kms azure-kv-key; do
    ledger=$dir/$provider.db
    case $provider in
        file) flags=() ;;
        transit) flags=(--master-key "vault-transit://127.0.0.1:$bao_port/transit/sledger?tls=off") ;;
        kms) flags=(--master-key "aws-kms://us-east-1/$key?endpoint=http://127.0.0.1:$moto_port") ;;
        gcp-kms) flags=(--master-key "gcp-kms://$gcp_key?endpoint=http://127.0.0.1:$drongo_port") ;;
        azure-kv-key) flags=(--master-key "azure-kv-key://127.0.0.1:$azure_port/keys/master?ca-file=$dir/ca.pem") ;;
    esac
    "$bin" --ledger "$ledger" "${flags[@]}" init >/dev/null
    "$bin" --ledger "$ledger" secret create db --value password=s3cr3t --wait 0 >/dev/null
    ms=$(median_ms "$bin" --ledger "$ledger" secret get db --from ledger)
    [ -z "$file_ms" ] && file_ms=$ms
    echo "| $provider | $ms ms | $(python3 -c "print(f'{$ms/$file_ms:.2f}×')") |"
done
