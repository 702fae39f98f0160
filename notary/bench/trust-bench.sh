#!/usr/bin/env bash
# Benchmark `swarmguard trust-server` + `trust-signer` against Debian's
# notary-server + notary-signer (memory storage), all on loopback ports
# chosen at run time, in one run:
#   * GET timestamp.json and targets.<sha256>.json: requests/s and CPU per
#     request (server + signer, from /proc/<pid>/stat) at 2 and 32 connections (wrk)
#   * publish latency with the notary CLI (p50 of N publishes)
#   * trusted `docker push` latency (p50 of N pushes; needs dockerd, registry),
#     end to end and the trust server's share of it (p50 over N more pushes of
#     the summed time the client waited on the trust server, via timing-proxy.py)
#   * GET timestamp.json with token authentication on (a bearer token on every request):
#     swarmguard trust-server with its built-in token service against notary-server with
#     `auth: token` trusting that service's certificate; requests/s and CPU per request
#   * RSS of every server process after the load
# Usage: notary/bench/trust-bench.sh [path/to/swarmguard]   (release build recommended)
# Env: DURATION (wrk seconds, default 10), N (publishes/pushes, default 5), SKIP_DOCKER=1
set -euo pipefail

BIN=${1:-${SWARMGUARD_BIN:-/work/target-notary/release/swarmguard}}
HERE=$(cd "$(dirname "$0")" && pwd)
DURATION=${DURATION:-10}
N=${N:-5}
for b in "$BIN" notary notary-server notary-signer wrk openssl curl python3; do
  command -v "$b" >/dev/null || { echo "missing required binary: $b" >&2; exit 1; }
done

W=$(mktemp -d /tmp/sgb.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT

freeport() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
waitport() { for _ in $(seq 1 300); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; return 1; }
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
rss_kb() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }
p50() { sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
now_ms() { date +%s%3N; }
TICK=$(getconf CLK_TCK)

# ---- PKI: one CA; server cert (IP SAN), signer cert, client cert.
cd "$W"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 7 -subj /CN=bench-ca \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign -keyout ca.key -out ca.crt 2>/dev/null
leaf() { # name eku
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$1" -keyout "$1.key" -out "$1.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=%s\n' "$2" > "$1.ext"
  openssl x509 -req -days 7 -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -extfile "$1.ext" -out "$1.crt" 2>/dev/null
  # notary (Go) wants PKCS#8 or EC keys; both are fine.
}
leaf server serverAuth; leaf signer serverAuth; leaf client clientAuth

# ---- Debian notary-signer + notary-server
NS_GRPC=$(freeport); NS_HTTP=$(freeport); N_PORT=$(freeport)
cat > signer.json <<J
{"server":{"http_addr":"127.0.0.1:$NS_HTTP","grpc_addr":"127.0.0.1:$NS_GRPC","tls_cert_file":"$W/signer.crt","tls_key_file":"$W/signer.key","client_ca_file":"$W/ca.crt"},
 "logging":{"level":"error"},"storage":{"backend":"memory","default_alias":"benchalias"}}
J
cat > server.json <<J
{"server":{"http_addr":"127.0.0.1:$N_PORT","tls_cert_file":"$W/server.crt","tls_key_file":"$W/server.key"},
 "trust_service":{"type":"remote","hostname":"127.0.0.1","port":"$NS_GRPC","tls_ca_file":"$W/ca.crt","key_algorithm":"ecdsa","tls_client_cert":"$W/client.crt","tls_client_key":"$W/client.key"},
 "logging":{"level":"error"},"storage":{"backend":"memory"}}
J
NOTARY_SIGNER_BENCHALIAS=benchpass notary-signer -config signer.json > notary-signer.log 2>&1 & NSIG=$!; PIDS+=($NSIG)
waitport "$NS_GRPC"
notary-server -config server.json > notary-server.log 2>&1 & NSRV=$!; PIDS+=($NSRV)
waitport "$N_PORT"

# ---- swarmguard trust-signer + trust-server
S_GRPC=$(freeport); S_PORT=$(freeport)
(umask 077; head -c 32 /dev/urandom | base64 > master.key)
"$BIN" trust-signer --data-dir "$W/sg-signer" --listen 127.0.0.1:"$S_GRPC" --tls-cert signer.crt --tls-key signer.key \
  --client-ca ca.crt --signer-key-file master.key > sg-signer.log 2>&1 & SSIG=$!; PIDS+=($SSIG)
waitport "$S_GRPC"
"$BIN" trust-server --data-dir "$W/sg-server" --listen 127.0.0.1:"$S_PORT" --tls-cert server.crt --tls-key server.key \
  --signer-url https://127.0.0.1:"$S_GRPC" --signer-ca ca.crt --signer-client-cert client.crt --signer-client-key client.key \
  > sg-server.log 2>&1 & SSRV=$!; PIDS+=($SSRV)
waitport "$S_PORT"

# ---- the same two servers with token authentication on (same signers): ours with its
# built-in token service, notary-server with `auth: token` trusting our token certificate.
SA_PORT=$(freeport); NA_PORT=$(freeport)
python3 -c "import crypt; print('bench:' + crypt.crypt('bench-pw', crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=1024)))" > users.htpasswd
echo 'bench * push,pull,*' > access.list
"$BIN" trust-server --data-dir "$W/sg-auth" --listen 127.0.0.1:"$SA_PORT" --tls-cert server.crt --tls-key server.key \
  --signer-url https://127.0.0.1:"$S_GRPC" --signer-ca ca.crt --signer-client-cert client.crt --signer-client-key client.key \
  --token-service-users users.htpasswd --token-access access.list > sg-auth.log 2>&1 & SAUTH=$!; PIDS+=($SAUTH)
waitport "$SA_PORT"
cat > server-auth.json <<J
{"server":{"http_addr":"127.0.0.1:$NA_PORT","tls_cert_file":"$W/server.crt","tls_key_file":"$W/server.key"},
 "trust_service":{"type":"remote","hostname":"127.0.0.1","port":"$NS_GRPC","tls_ca_file":"$W/ca.crt","key_algorithm":"ecdsa","tls_client_cert":"$W/client.crt","tls_client_key":"$W/client.key"},
 "logging":{"level":"error"},"storage":{"backend":"memory"},
 "auth":{"type":"token","options":{"realm":"https://127.0.0.1:$SA_PORT/auth/token","service":"notary-bench",
         "issuer":"swarmguard-token-service","rootcertbundle":"$W/sg-auth/token-signing.crt"}}}
J
notary-server -config server-auth.json > notary-server-auth.log 2>&1 & NAUTH=$!; PIDS+=($NAUTH)
waitport "$NA_PORT"

export NOTARY_ROOT_PASSPHRASE=bench NOTARY_TARGETS_PASSPHRASE=bench NOTARY_SNAPSHOT_PASSPHRASE=bench
GUN=127.0.0.1:5000/bench/app
echo "payload" > payload.txt

declare -A RESULT
bench_one() { # label port server_pid signer_pid
  local label=$1 port=$2 spid=$3 gpid=$4 url="https://127.0.0.1:$2"
  local nt=(notary -d "$W/trust-$label" -s "$url" --tlscacert ca.crt)
  "${nt[@]}" init "$GUN" >/dev/null
  "${nt[@]}" add "$GUN" v0 payload.txt >/dev/null
  "${nt[@]}" publish "$GUN" >/dev/null
  "${nt[@]}" key rotate "$GUN" snapshot -r >/dev/null   # server-managed snapshot, like docker
  local times=()
  for i in $(seq 1 "$N"); do
    "${nt[@]}" add "$GUN" "v$i" payload.txt >/dev/null
    local t0; t0=$(now_ms); "${nt[@]}" publish "$GUN" >/dev/null; times+=($(( $(now_ms) - t0 )))
  done
  RESULT[$label,publish_p50_ms]=$(printf '%s\n' "${times[@]}" | p50)
  local ts_url="$url/v2/$GUN/_trust/tuf/timestamp.json"
  local snap; snap=$(curl -s --cacert ca.crt "$ts_url" | python3 -c 'import sys,json,base64;print(base64.b64decode(json.load(sys.stdin)["signed"]["meta"]["snapshot"]["hashes"]["sha256"]).hex())')
  local tg; tg=$(curl -s --cacert ca.crt "$url/v2/$GUN/_trust/tuf/snapshot.$snap.json" | python3 -c 'import sys,json,base64;print(base64.b64decode(json.load(sys.stdin)["signed"]["meta"]["targets"]["hashes"]["sha256"]).hex())')
  local tg_url="$url/v2/$GUN/_trust/tuf/targets.$tg.json"
  for what in timestamp targets; do
    local u=$ts_url; [ "$what" = targets ] && u=$tg_url
    for c in 2 32; do
      local c0 g0; c0=$(cpu_ticks "$spid"); g0=$(cpu_ticks "$gpid")
      local out; out=$(wrk -t2 -c"$c" -d"${DURATION}s" --latency "$u")
      local c1 g1; c1=$(cpu_ticks "$spid"); g1=$(cpu_ticks "$gpid")
      local reqs rps; reqs=$(echo "$out" | awk '/requests in/{print $1}'); rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
      RESULT[$label,$what,c$c,rps]=$rps
      RESULT[$label,$what,c$c,cpu_us_per_req]=$(python3 -c "print(round(((($c1-$c0)+($g1-$g0))/$TICK)*1e6/max(1,$reqs),1))")
    done
  done
  RESULT[$label,rss_server_kb]=$(rss_kb "$spid"); RESULT[$label,rss_signer_kb]=$(rss_kb "$gpid")
}

bench_auth() { # label port server_pid signer_pid service: GET timestamp.json with a token
  local label=$1 port=$2 spid=$3 gpid=$4 svc=$5 url="https://127.0.0.1:$2"
  local nt=(notary -d "$W/trust-auth-$label" -s "$url" --tlscacert ca.crt)
  NOTARY_AUTH=$(printf 'bench:bench-pw' | base64) "${nt[@]}" init -p "$GUN" >/dev/null
  local ts_url="$url/v2/$GUN/_trust/tuf/timestamp.json"
  for c in 2 32; do
    # A fresh 5-minute token for each run, from our token service, as a client would get it.
    local tok; tok=$(curl -s --cacert ca.crt -u bench:bench-pw \
      "https://127.0.0.1:$SA_PORT/auth/token?service=$svc&scope=repository:$GUN:pull" |
      python3 -c 'import sys,json;print(json.load(sys.stdin)["token"])')
    local code; code=$(curl -s -o /dev/null -w '%{http_code}' --cacert ca.crt -H "Authorization: Bearer $tok" "$ts_url")
    [ "$code" = 200 ] || { echo "$label: token refused ($code)" >&2; exit 1; }
    [ "$(curl -s -o /dev/null -w '%{http_code}' --cacert ca.crt "$ts_url")" = 401 ] || { echo "$label: auth is off" >&2; exit 1; }
    local c0 g0; c0=$(cpu_ticks "$spid"); g0=$(cpu_ticks "$gpid")
    local out; out=$(wrk -t2 -c"$c" -d"${DURATION}s" --latency -H "Authorization: Bearer $tok" "$ts_url")
    local c1 g1; c1=$(cpu_ticks "$spid"); g1=$(cpu_ticks "$gpid")
    local reqs rps non2xx; reqs=$(echo "$out" | awk '/requests in/{print $1}'); rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
    non2xx=$(echo "$out" | awk '/Non-2xx/{print $NF}')
    [ -z "$non2xx" ] || { echo "$label: $non2xx non-2xx answers under load" >&2; exit 1; }
    RESULT[$label,timestamp_token_auth,c$c,rps]=$rps
    RESULT[$label,timestamp_token_auth,c$c,cpu_us_per_req]=$(python3 -c "print(round(((($c1-$c0)+($g1-$g0))/$TICK)*1e6/max(1,$reqs),1))")
  done
  RESULT[$label,rss_server_auth_kb]=$(rss_kb "$spid")
}

bench_one notary "$N_PORT" "$NSRV" "$NSIG"
bench_one swarmguard "$S_PORT" "$SSRV" "$SSIG"
bench_auth notary "$NA_PORT" "$NAUTH" "$NSIG" notary-bench
bench_auth swarmguard "$SA_PORT" "$SAUTH" "$SSIG" swarmguard-trust

# ---- trusted docker push latency (optional)
if [ "${SKIP_DOCKER:-0}" != 1 ] && command -v dockerd >/dev/null && command -v docker-registry >/dev/null; then
  R_PORT=$(freeport); D="$W/d"; mkdir -p "$D/reg" "$D/cfg"
  printf 'version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' "$D/reg" "$R_PORT" > "$D/reg.yml"
  docker-registry serve "$D/reg.yml" > "$D/registry.log" 2>&1 & PIDS+=($!)
  dockerd --data-root "$D/data" --exec-root "$D/x" -H unix://"$D/s" --pidfile "$D/p" --iptables=false --ip-forward=false \
    --ip-masq=false --bridge=none --storage-driver=vfs > "$D/dockerd.log" 2>&1 & PIDS+=($!)
  waitport "$R_PORT"
  for _ in $(seq 1 300); do docker -H unix://"$D/s" version >/dev/null 2>&1 && break; sleep 0.2; done
  export DOCKER_HOST=unix://$D/s DOCKER_CONFIG=$D/cfg DOCKER_CONTENT_TRUST_ROOT_PASSPHRASE=bench DOCKER_CONTENT_TRUST_REPOSITORY_PASSPHRASE=bench
  mkdir -p "$D/rootfs"
  push() { # label i trust-port → prints the push's wall time in ms
    echo "$1 $2 $RANDOM" > "$D/rootfs/f"; tar -C "$D/rootfs" -cf "$D/r.tar" .
    local img=127.0.0.1:$R_PORT/bench/$1:t$2
    docker import "$D/r.tar" "$img" >/dev/null
    local t0; t0=$(now_ms)
    DOCKER_CONTENT_TRUST=1 DOCKER_CONTENT_TRUST_SERVER=https://127.0.0.1:$3 docker push "$img" >/dev/null
    echo $(( $(now_ms) - t0 ))
  }
  for label in notary swarmguard; do
    port=$N_PORT; [ $label = swarmguard ] && port=$S_PORT
    # End to end, straight to the trust server. The first push creates the
    # repository (keys, root); it is a sample like the others.
    times=()
    for i in $(seq 1 "$N"); do times+=($(push "$label" "$i" "$port")); done
    RESULT[$label,push_p50_ms]=$(printf '%s\n' "${times[@]}" | p50)
    # The trust server's share: the same pushes (to a fresh repository, so the
    # first one again creates it) through a byte-copying proxy that logs how
    # long each exchange waits on the server (timing-proxy.py). Summed per push.
    P_PORT=$(freeport); PLOG="$D/proxy-$label.log"; : > "$PLOG"
    python3 "$HERE/timing-proxy.py" "$P_PORT" "$port" "$PLOG" & PIDS+=($!)
    waitport "$P_PORT"
    shares=(); ptimes=()
    for i in $(seq 1 "$N"); do
      : > "$PLOG"
      ptimes+=($(push "$label-via-proxy" "$i" "$P_PORT"))
      sleep 0.3   # the proxy logs a connection's last exchange once it sees the close
      shares+=($(awk '{s+=$3-$1; n++} END{printf "%.1f\n", s/1e6}' "$PLOG"))
      echo "$label push $i via proxy: ${ptimes[-1]} ms, trust server ${shares[-1]} ms in $(wc -l < "$PLOG") exchanges" >&2
    done
    RESULT[$label,push_trust_server_p50_ms]=$(printf '%s\n' "${shares[@]}" | p50)
  done
fi

printf '\n%-44s %14s %14s %8s\n' metric notary swarmguard ratio
for k in $(printf '%s\n' "${!RESULT[@]}" | sed 's/^[^,]*,//' | sort -u); do
  a=${RESULT[notary,$k]:-}; b=${RESULT[swarmguard,$k]:-}
  r=$(python3 -c "a='$a';b='$b';print(round(float(b)/float(a),2) if a and b and float(a) else '-')")
  printf '%-44s %14s %14s %8s\n' "$k" "$a" "$b" "$r"
done
