#!/usr/bin/env bash
# Images benchmark (issue 15), two parts, run as root on an idle host:
#  1. cold request of an image-based app vs the same files as a `rootfs` directory, side by
#     side in one `hako serve` (alternating, each request after the previous instance stopped);
#  2. pull + unpack of a ~100 MB image (random-content layer, incompressible) from a loopback
#     docker-registry: `hako image pull` vs `skopeo copy` + `umoci unpack`, with hako's max RSS.
# Usage: bench/images.sh [HAKO_BINARY] [ROUNDS]   (default target/release/hako, 25 rounds)
# Needs: docker-registry skopeo umoci busybox-static curl, GNU time is not needed (RSS from
# /proc/PID/status, sampled).
set -euo pipefail
HAKO=${1:-target/release/hako}
ROUNDS=${2:-25}
HAKO=$(readlink -f "$HAKO")
W=$(mktemp -d /tmp/hako-bench-images.XXXXXX)
REG_PID=""; HAKO_PID=""
cleanup() {
    [ -n "$HAKO_PID" ] && kill "$HAKO_PID" 2>/dev/null && wait "$HAKO_PID" 2>/dev/null || true
    [ -n "$REG_PID" ] && kill "$REG_PID" 2>/dev/null && wait "$REG_PID" 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
p50() { sort -n | awk '{a[NR]=$1} END {i=int((NR+1)/2); printf "%.2f", a[i]*1000}'; }

# --- the rootfs and its image
R=$W/rootfs
mkdir -p $R/{bin,proc,dev,sys,tmp,run,etc,www}
cp /usr/bin/busybox $R/bin/busybox
for a in $(/usr/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox $R/bin/$a; done
echo 'root:x:0:0::/:/bin/sh' > $R/etc/passwd; echo 'root:x:0:' > $R/etc/group
echo hello > $R/www/index.html
umoci init --layout $W/img >/dev/null
umoci new --image $W/img:v1
umoci insert --image $W/img:v1 $R / >/dev/null

# --- part 1: cold request, image vs directory
P=$(free_port); A=$(free_port)
cat > $W/cold.yaml <<YAML
listen: 127.0.0.1:$P
admin: 127.0.0.1:$A
state_dir: $W/state
cgroup_parent: hako-bench-images-$$
governor: {enabled: false}
apps:
  - name: dir
    hosts: [dir.test]
    rootfs: $R
    command: ["/bin/httpd", "-f", "-p", "8080", "-h", "/www"]
    lifetime: {idle_timeout: 1s}
  - name: img
    hosts: [img.test]
    image: oci:$W/img:v1
    command: ["/bin/httpd", "-f", "-p", "8080", "-h", "/www"]
    lifetime: {idle_timeout: 1s}
YAML
"$HAKO" serve -c $W/cold.yaml 2>$W/serve.log & HAKO_PID=$!
for _ in $(seq 50); do curl -sf http://127.0.0.1:$A/healthz >/dev/null && break; sleep 0.1; done
# The image is pulled in the background at start: let it finish (not part of a cold request).
curl -s -H 'Host: img.test' http://127.0.0.1:$P/ >/dev/null; sleep 1.5
idle() { ! curl -s http://127.0.0.1:$A/v1/instances | grep -q '"app"'; }
: > $W/dir.txt; : > $W/img.txt
for i in $(seq $ROUNDS); do
    for app in dir img; do
        for _ in $(seq 100); do idle && break; sleep 0.05; done
        curl -s -o /dev/null -w '%{time_total}\n' -H "Host: $app.test" http://127.0.0.1:$P/ >> $W/$app.txt
    done
done
echo "cold request p50 over $ROUNDS rounds: rootfs dir $(p50 < $W/dir.txt) ms, image (overlay) $(p50 < $W/img.txt) ms"
kill $HAKO_PID; wait $HAKO_PID 2>/dev/null || true; HAKO_PID=""

# --- part 2: pull + unpack of ~100 MB
RP=$(free_port)
cat > $W/reg.yml <<YAML
version: 0.1
log: {level: error}
storage: {filesystem: {rootdirectory: $W/registry}}
http: {addr: 127.0.0.1:$RP}
YAML
docker-registry serve $W/reg.yml >/dev/null 2>&1 & REG_PID=$!
for _ in $(seq 50); do curl -sf http://127.0.0.1:$RP/v2/ >/dev/null && break; sleep 0.1; done
mkdir -p $W/big/data
for n in 1 2 3 4; do head -c 25M /dev/urandom > $W/big/data/blob$n; done
umoci insert --image $W/img:v1 $W/big / >/dev/null
skopeo copy -q --dest-tls-verify=false oci:$W/img:v1 docker://127.0.0.1:$RP/bench/big:v1
REF=docker://127.0.0.1:$RP/bench/big:v1
cat > $W/pull.yaml <<YAML
state_dir: $W/pullstate
registries: [{host: "127.0.0.1:$RP", insecure: true}]
apps: [{name: x, hosts: [x.test], image: "$REF"}]
YAML
maxrss() { # PID -> max VmHWM seen (KiB)
    local m=0 v
    while kill -0 $1 2>/dev/null; do
        v=$(awk '/VmHWM/ {print $2}' /proc/$1/status 2>/dev/null || echo 0); [ "${v:-0}" -gt $m ] && m=$v
        sleep 0.01
    done; echo $m
}
for round in 1 2 3; do
    rm -rf $W/pullstate $W/sk $W/bundle
    sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
    t0=$(date +%s.%N)
    "$HAKO" image -c $W/pull.yaml pull "$REF" >/dev/null 2>&1 & pid=$!
    rss=$(maxrss $pid); wait $pid
    t1=$(date +%s.%N)
    sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
    t2=$(date +%s.%N)
    skopeo copy -q --src-tls-verify=false "$REF" oci:$W/sk:v1
    umoci unpack --image $W/sk:v1 $W/bundle >/dev/null
    t3=$(date +%s.%N)
    echo "pull+unpack ~100 MB, round $round: hako $(echo "$t1 - $t0" | bc) s (max RSS $((rss / 1024)) MiB), skopeo copy + umoci unpack $(echo "$t3 - $t2" | bc) s"
done
