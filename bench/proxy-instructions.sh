#!/usr/bin/env bash
# User-space instructions per proxied request of hako's proxy (issue 18), counted by
# valgrind's callgrind: a measure that does not move with the machine's load, for A/B of
# changes that are too small to see in req/s on a 2-core VM.
#
# The proxy runs as `proxy/examples/bench_proxy` (hako_proxy::serve in front of one fixed
# upstream, one worker thread) under callgrind, in front of nginx (`return 200`) on loopback;
# h2load sends N1 and then N2 keep-alive requests (32 connections) in two runs, and the
# difference of the two totals divided by N2 - N1 is the cost of one request (start-up and
# shutdown cancel out).
#
# Usage: bench/proxy-instructions.sh [BENCH_PROXY_BINARY] [N1] [N2]
#   default: target/release/examples/bench_proxy (cargo build --release -p hako-proxy
#   --example bench_proxy), 2000 and 22000.
# Needs: valgrind nginx-light nghttp2-client curl. Leaves callgrind files in a temporary
# directory it names (callgrind_annotate FILE shows where the instructions go).
set -euo pipefail
BIN=$(readlink -f "${1:-target/release/examples/bench_proxy}")
N1=${2:-2000}
N2=${3:-22000}
for tool in valgrind nginx h2load curl; do
    command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 2; }
done
W=$(mktemp -d /tmp/hako-proxy-instructions.XXXXXX)
BE_PID=""; P_PID=""
cleanup() {
    [ -n "$P_PID" ] && kill -INT "$P_PID" 2>/dev/null && wait "$P_PID" 2>/dev/null || true
    [ -n "$BE_PID" ] && kill "$BE_PID" 2>/dev/null && wait "$BE_PID" 2>/dev/null || true
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

BE_PORT=$(free_port)
cat > "$W/be.conf" <<EOF
daemon off; master_process off; worker_processes 1; pid $W/be.pid; error_log $W/be.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 100000000; keepalive_timeout 300s;
client_body_temp_path $W/b; proxy_temp_path $W/p; fastcgi_temp_path $W/f;
uwsgi_temp_path $W/u; scgi_temp_path $W/s;
server { listen 127.0.0.1:$BE_PORT; location / { return 200 'ok\n'; } } }
EOF
nginx -p "$W" -c "$W/be.conf" -e "$W/be.err" & BE_PID=$!

# One run: N requests through the proxy under callgrind; prints the total instruction count.
run() {
    local n=$1 port out
    port=$(free_port)
    out="$W/callgrind.$n.out"
    HAKO_PROXY_WORKERS=1 valgrind --tool=callgrind --callgrind-out-file="$out" "$BIN" \
        --listen "127.0.0.1:$port" --upstream "127.0.0.1:$BE_PORT" 2>"$W/valgrind.$n.txt" &
    P_PID=$!
    for _ in $(seq 1 150); do
        curl -s -o /dev/null "http://127.0.0.1:$port/" && break
        sleep 0.2
    done
    h2load --h1 -n "$n" -c 32 -m 1 "http://127.0.0.1:$port/" > "$W/h2load.$n.txt" 2>&1
    grep -q "$n succeeded" "$W/h2load.$n.txt" || { cat "$W/h2load.$n.txt" >&2; exit 1; }
    kill -INT "$P_PID"; wait "$P_PID" || true; P_PID=""
    awk '/^totals:/ {print $2}' "$out"
}
T1=$(run "$N1")
T2=$(run "$N2")
echo "callgrind totals: $N1 requests $T1, $N2 requests $T2 instructions (files in $W)"
echo "instructions per request: $(( (T2 - T1) / (N2 - N1) ))"
