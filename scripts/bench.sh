#!/usr/bin/env bash
# Runs the performance table of issue 6 in one sitting and writes it to
# docs/performance.md: the echo ceiling, Redis 7 Streams anchors, and
# walrus-server 1-node and 3-node clusters (PUT to the segment leader and
# through another node, 100 B and 1 KiB, 1/16 connections, depth 1/32,
# --fsync always and interval:200, GET), server CPU and memory, time to
# ready and time for writes to resume after kill -9 of a segment leader.
#
# Usage: scripts/bench.sh            (everything, ~10 minutes)
# Environment:
#   BENCH_DURATION   length of each load run (default 5s)
#   BENCH_OUT        where the markdown goes (default docs/performance.md)
#   BENCH_SKIP       space-separated sections to skip: echo redis walrus failover consumers
#                    security replication
#   BENCH_NO_BUILD=1 use the binaries already in $CARGO_TARGET_DIR/release
#   BENCH_PORT_BASE  first port used (default 27000)
#   BENCH_SERVER_BIN walrus-server binary to measure (default: the release build)
#   BENCH_BASELINE   results (.jsonl) of a run of this script against a baseline
#                    build, taken just before in the same sitting, e.g. round 1:
#                    BENCH_SERVER_BIN=<round-1 walrus-server> BENCH_SKIP="echo redis" \
#                      BENCH_OUT=/tmp/round1.md scripts/bench.sh   (writes /tmp/round1.jsonl)
#                    then BENCH_BASELINE=/tmp/round1.jsonl scripts/bench.sh: every
#                    Walrus row gets the baseline's ops/s and the ratio beside it.
#   BENCH_SEGMENT_ENTRIES  WALRUS_MAX_SEGMENT_ENTRIES of the measured clusters
#                    (default 50,000,000: a run stays in one segment, so "to
#                    leader" and "to other" mean what they say; with the
#                    default 1,000,000 a fast run rolls over and the leader
#                    moves to the next node mid-run)
# Redis is installed with apt-get when missing (needs root).
#
# Every process this script starts is stopped by its pid on exit. Traffic
# goes to 127.0.0.1 only.

set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DUR=${BENCH_DURATION:-5s}
case $DUR in
*ms) DUR_S=$(echo "${DUR%ms} / 1000" | bc -l) ;;
*s) DUR_S=${DUR%s} ;;
*m) DUR_S=$(echo "${DUR%m} * 60" | bc -l) ;;
*) DUR_S=$DUR ;;
esac
OUT=${BENCH_OUT:-$ROOT/docs/performance.md}
SKIP=" ${BENCH_SKIP:-} "
PORT_BASE=${BENCH_PORT_BASE:-27000}
SEGMENT_ENTRIES=${BENCH_SEGMENT_ENTRIES:-50000000}
export BENCH_SEGMENT_ENTRIES=$SEGMENT_ENTRIES
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET_DIR/release
# Data on the real disk (not tmpfs), so fsync costs what it costs.
WORK=$(mktemp -d "${BENCH_WORK_PARENT:-/var/tmp}/walrus-bench.XXXXXX")
RESULTS=$WORK/results.jsonl
: >"$RESULTS"
STARTED_PIDS=()

# Stops a process this script started, quietly (no "Killed" job notice).
stop_pid() {
    { kill -9 "$1" && wait "$1"; } 2>/dev/null || true
}

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
skipped() { [[ "$SKIP" == *" $1 "* ]]; }

cleanup() {
    local pid
    for pid in "${STARTED_PIDS[@]:-}"; do
        [[ -n "$pid" ]] && kill -9 "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    [[ -n "${BENCH_KEEP:-}" ]] || rm -rf "$WORK"
}
trap cleanup EXIT

# --- measurements of server processes -------------------------------------

CLK_TCK=$(getconf CLK_TCK)
# utime+stime of a pid, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
status_kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
anon_kib() { awk '$1 == "Anonymous:" {print $2}' "/proc/$1/smaps_rollup" 2>/dev/null || echo 0; }

# JSON object with CPU% (of one core) over the run and memory after it,
# for every pid in SERVER_PIDS (set while a cluster runs).
SERVER_PIDS=()
declare -A TICKS_BEFORE=()
server_sample_start() {
    local pid
    for pid in "${SERVER_PIDS[@]:-}"; do
        [[ -n "$pid" ]] && TICKS_BEFORE[$pid]=$(cpu_ticks "$pid")
    done
    SAMPLE_T0=$(date +%s.%N)
}
server_sample_end() {
    local t1 pid ticks elapsed out="[" sep=""
    t1=$(date +%s.%N)
    elapsed=$(echo "$t1 - $SAMPLE_T0" | bc -l)
    for pid in "${SERVER_PIDS[@]:-}"; do
        [[ -z "$pid" ]] && continue
        ticks=$(($(cpu_ticks "$pid") - ${TICKS_BEFORE[$pid]:-0}))
        out+="$sep{\"pid\":$pid,\"cpu_pct\":$(echo "100 * $ticks / $CLK_TCK / $elapsed" | bc -l | xargs printf '%.1f'),"
        out+="\"rss_kib\":$(status_kib "$pid" VmRSS),\"rss_anon_kib\":$(status_kib "$pid" RssAnon),"
        out+="\"anonymous_kib\":$(anon_kib "$pid"),\"hwm_kib\":$(status_kib "$pid" VmHWM)}"
        sep=","
    done
    echo "$out]"
}

# --- the disk ------------------------------------------------------------------

# fdatasync cost right now (1 KiB appends): on a shared virtual disk it
# swings by 10x with the neighbours' I/O, and every --fsync always /
# appendfsync always figure moves with it.
fsync_probe() { # label
    python3 - "$WORK" "$1" >>"$RESULTS" <<'EOF'
import json, os, sys, time
path = os.path.join(sys.argv[1], "fsync-probe.tmp")
fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC | os.O_APPEND)
lat, buf, t0 = [], b"x" * 1024, time.perf_counter()
while len(lat) < 500 and time.perf_counter() - t0 < 2:
    a = time.perf_counter()
    os.write(fd, buf)
    os.fdatasync(fd)
    lat.append((time.perf_counter() - a) * 1e3)
elapsed = time.perf_counter() - t0
os.close(fd)
os.unlink(path)
lat.sort()
print(json.dumps({"section": "fsync-probe", "label": sys.argv[2], "count": len(lat),
                  "per_sec": len(lat) / elapsed, "p50_ms": lat[len(lat) // 2],
                  "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))]}))
EOF
    tail -1 "$RESULTS" | jq -r '"[fsync probe] \(.label): \(.per_sec|floor) fdatasync/s, p50 \(.p50_ms) ms"' >&2
}

# --- one walrus-bench run ---------------------------------------------------

# bench_run SECTION LABEL walrus-bench-args...
bench_run() {
    local section=$1 label=$2
    shift 2
    local dur=${RUN_DUR:-$DUR}
    local cmd=(walrus-bench -t "$dur" "$@")
    log "$section / $label: ${cmd[*]}"
    server_sample_start
    local json rc=0
    json=$("$BIN/walrus-bench" --json -q -t "$dur" "$@") || rc=$?
    if [[ -z "$json" ]]; then
        log "  walrus-bench failed (exit $rc)"
        json='{"ops_per_sec":0,"errors_total":1,"errors":{"walrus-bench could not run":1}}'
    elif ((rc != 0)); then
        log "  walrus-bench exit $rc (verification failed)"
    fi
    local servers
    servers=$(server_sample_end)
    jq -c --arg s "$section" --arg l "$label" --arg c "${cmd[*]}" --argjson srv "$servers" \
        '. + {section: $s, label: $l, cmd: $c, servers: $srv}' <<<"$json" >>"$RESULTS"
    jq -r '"  \(.ops_per_sec|floor) ops/s, p50 \(.latency_ms.p50) ms, p99 \(.latency_ms.p99) ms, errors \(.errors_total)"' <<<"$json" >&2 || true
}

wait_port() { # host:port, timeout s
    local end=$((SECONDS + $2))
    while ((SECONDS < end)); do
        (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null && return 0
        sleep 0.05
    done
    return 1
}

# --- build -------------------------------------------------------------------

SERVER_BIN=${BENCH_SERVER_BIN:-$BIN/walrus-server}
HAVE_SERVER=0
if [[ -z "${BENCH_NO_BUILD:-}" ]]; then
    log "building release binaries"
    (cd "$ROOT" && cargo build --release -p walrus-bench)
    if [[ -f "$ROOT/walrus-server/src/bin/walrus-server.rs" ]]; then
        (cd "$ROOT" && cargo build --release -p walrus-server --bin walrus-server) && HAVE_SERVER=1
    fi
else
    [[ -x "$SERVER_BIN" ]] && HAVE_SERVER=1
fi
export PATH="$BIN:$PATH"

# --- echo ceiling --------------------------------------------------------------

ECHO_ADDR=127.0.0.1:$((PORT_BASE + 99))
if ! skipped echo; then
    "$BIN/walrus-echo" --addr "$ECHO_ADDR" 2>/dev/null &
    ECHO_PID=$!
    STARTED_PIDS+=("$ECHO_PID")
    wait_port "$ECHO_ADDR" 10
    SERVER_PIDS=("$ECHO_PID")
    bench_run echo "1 KiB, 1 conn" -a "$ECHO_ADDR" -s 1024 -c 1 -d 1
    bench_run echo "1 KiB, 1 conn, ordinary client (no TCP_NODELAY)" -a "$ECHO_ADDR" -s 1024 -c 1 -d 1 --no-nodelay
    bench_run echo "1 KiB, 16 conns" -a "$ECHO_ADDR" -s 1024 -c 16 -d 1
    bench_run echo "1 KiB, 16 conns x depth 32" -a "$ECHO_ADDR" -s 1024 -c 16 -d 32
    bench_run echo "100 B, 16 conns x depth 32" -a "$ECHO_ADDR" -s 100 -c 16 -d 32
    stop_pid "$ECHO_PID"
    SERVER_PIDS=()
fi

# --- Redis 7 Streams anchors ------------------------------------------------------

redis_rps() { # conns pipeline requests -> requests/s (redis-benchmark has no duration)
    timeout 120 redis-benchmark -p "$REDIS_PORT" -c "$1" -n "$3" -P "$2" --csv XADD s '*' f "$PAYLOAD_1K" |
        tail -1 | cut -d, -f2 | tr -d '"'
}

redis_run() { # label conns pipeline
    local label=$1 c=$2 p=$3 n csv probe
    # Size the request count for about one run length at the rate a short
    # probe shows: fsync costs differ by orders of magnitude between disks.
    probe=$(redis_rps "$c" "$p" $((c * p * 20)))
    n=$(echo "$probe * $DUR_S / 1" | bc)
    ((n < c * p * 20)) && n=$((c * p * 20))
    local cmd=(redis-benchmark -p "$REDIS_PORT" -c "$c" -n "$n" -P "$p" --csv XADD s "'*'" f "<1 KiB>")
    log "redis $REDIS_FSYNC / $label: ${cmd[*]}"
    redis-cli -p "$REDIS_PORT" DEL s >/dev/null
    server_sample_start
    csv=$(timeout 120 redis-benchmark -p "$REDIS_PORT" -c "$c" -n "$n" -P "$p" --csv XADD s '*' f "$PAYLOAD_1K" | tail -1)
    local servers
    servers=$(server_sample_end)
    if [[ "$csv" != *,* ]]; then
        log "  redis-benchmark gave no result"
        return 0
    fi
    # "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
    python3 - "$csv" "$label" "${cmd[*]}" "$REDIS_FSYNC" "$servers" >>"$RESULTS" <<'EOF'
import csv, json, sys
row = next(csv.reader([sys.argv[1]]))
rps, avg, mn, p50, p95, p99, mx = (float(x) for x in row[1:8])
print(json.dumps({
    "section": "redis-" + sys.argv[4], "label": sys.argv[2], "cmd": sys.argv[3],
    "ops_per_sec": rps, "mib_per_sec": rps / 1024.0,
    "latency_ms": {"p50": p50, "p95": p95, "p99": p99, "max": mx, "mean": avg},
    "errors_total": 0, "errors": {}, "servers": json.loads(sys.argv[5]),
}))
EOF
    tail -1 "$RESULTS" | jq -r '"  \(.ops_per_sec|floor) ops/s, p50 \(.latency_ms.p50) ms, p99 \(.latency_ms.p99) ms"' >&2
}

if ! skipped redis; then
    if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null; then
        log "installing redis-server"
        apt-get update -qq && apt-get install -y -qq redis-server redis-tools >/dev/null
    fi
    PAYLOAD_1K=$(head -c 1024 /dev/zero | tr '\0' 'x')
    REDIS_PORT=$((PORT_BASE + 79))
    fsync_probe "before Redis"
    for REDIS_FSYNC in everysec always; do
        mkdir -p "$WORK/redis-$REDIS_FSYNC"
        redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$WORK/redis-$REDIS_FSYNC" \
            --appendonly yes --appendfsync "$REDIS_FSYNC" --save '' --daemonize no \
            --logfile "$WORK/redis-$REDIS_FSYNC.log" &
        REDIS_PID=$!
        STARTED_PIDS+=("$REDIS_PID")
        wait_port "127.0.0.1:$REDIS_PORT" 10
        SERVER_PIDS=("$REDIS_PID")
        redis_run "1 conn" 1 1
        redis_run "16 conns" 16 1
        redis_run "16 conns x pipeline 32" 16 32
        stop_pid "$REDIS_PID"
        SERVER_PIDS=()
    done
    redis-server --version | head -1 >"$WORK/redis-version"
fi

# --- walrus-server clusters ----------------------------------------------------------

client_addr() { echo "127.0.0.1:$((PORT_BASE + 10 + $1))"; }
raft_port() { echo $((PORT_BASE + 30 + $1)); }

# start_cluster NODES FSYNC TAG: starts the nodes at once; NODE_PIDS[id]
# Flags every node of the next start_cluster gets besides the usual ones.
EXTRA_SERVER_ARGS=()
# Every section but "replication" measures one copy per segment, as round 1
# did, so that its rows stay comparable with the baseline: the server's
# default is now min(3, voters). The replication section registers its
# topics with an explicit RF. (A build from before replication has no such
# flag and keeps one copy anyway.)
BASE_SERVER_ARGS=()
if "$SERVER_BIN" --help 2>/dev/null | grep -q -- --replication-factor; then
    BASE_SERVER_ARGS=(--replication-factor 1)
fi
start_cluster() {
    local n=$1 fsync=$2 tag=$3 id
    local dir=$WORK/$tag
    mkdir -p "$dir"
    NODE_PIDS=()
    SERVER_PIDS=()
    CLUSTER_T0=$(date +%s%N)
    for ((id = 1; id <= n; id++)); do
        local join=()
        ((id > 1)) && join=(--join "127.0.0.1:$(raft_port 1)")
        RUST_LOG=${RUST_LOG:-warn} WALRUS_MAX_SEGMENT_ENTRIES=$SEGMENT_ENTRIES \
            "$SERVER_BIN" --node-id "$id" --data-dir "$dir" \
            --raft-host 127.0.0.1 --raft-port "$(raft_port "$id")" \
            --client-host 127.0.0.1 --client-port "$(client_addr "$id" | cut -d: -f2)" \
            --fsync "$fsync" "${join[@]}" --log-file "$dir/node_$id.log" \
            "${BASE_SERVER_ARGS[@]}" "${EXTRA_SERVER_ARGS[@]}" &
        NODE_PIDS[$id]=$!
        STARTED_PIDS+=("$!")
        SERVER_PIDS+=("$!")
    done
}

stop_cluster() {
    local pid
    for pid in "${SERVER_PIDS[@]:-}"; do
        [[ -n "$pid" ]] && stop_pid "$pid"
    done
    SERVER_PIDS=()
}

# Time until every node accepts a PUT, from CLUSTER_T0; records a result.
wait_ready() { # nodes tag
    local n=$1 tag=$2 id
    for ((id = 1; id <= n; id++)); do
        if ! walrus-bench wait-write -a "$(client_addr "$id")" --topic "ready-$id" --register --timeout 60s >/dev/null; then
            log "$tag: node $id did not accept a write within 60 s"
            jq -nc --arg s "$tag" --arg p "node $id did not accept a write within 60 s of the start" \
                '{section: "problem", label: $s, problem: $p}' >>"$RESULTS"
            return 0
        fi
    done
    local ms=$((($(date +%s%N) - CLUSTER_T0) / 1000000))
    log "$tag: every node accepted a write ${ms} ms after start"
    jq -nc --arg s "$tag" --argjson ms "$ms" --argjson n "$n" \
        '{section: "ready", label: $s, nodes: $n, ready_ms: $ms}' >>"$RESULTS"
}

# REGISTER a topic, retried until the cluster takes it (then one PUT of
# "probe" shows it takes writes too).
register_topic() { # addr topic
    if ! walrus-bench wait-write -a "$1" --topic "$2" --register --timeout 30s >/dev/null; then
        log "  cannot register $2 at $1: the runs on it will show the errors"
        jq -nc --arg s "${CURRENT_SECTION:-}" --arg t "$2" --arg a "$1" \
            '{section: "problem", label: $s, problem: "REGISTER \($t) at \($a) not accepted within 30 s"}' >>"$RESULTS"
        return 1
    fi
}

# Node id leading the current segment of a topic (from STATE).
segment_leader() { # addr topic (1 when STATE does not say)
    local id
    id=$(walrus-bench request -a "$1" STATE "$2" 2>/dev/null | jq -r '.leader_node // empty' 2>/dev/null) || true
    echo "${id:-1}"
}

# walrus_matrix NODES FSYNC
walrus_matrix() {
    local n=$1 fsync=$2 tag="walrus-${1}n-${2/:/}"
    CURRENT_SECTION=$tag
    fsync_probe "before $tag"
    start_cluster "$n" "$fsync" "$tag"
    wait_ready "$n" "$tag"
    local reg
    reg=$(client_addr 1)
    local size sname via leader other conns depth topic
    for size in 1024 100; do
        [[ $size == 1024 ]] && sname="1 KiB" || sname="100 B"
        for via in leader other; do
            [[ $n == 1 && $via == other ]] && continue
            for conns_depth in "1 1" "16 1" "16 32"; do
                read -r conns depth <<<"$conns_depth"
                topic="t${size}-${via}-c${conns}-d${depth}"
                register_topic "$reg" "$topic-0" || true
                leader=$(segment_leader "$reg" "$topic-0")
                if [[ $via == leader ]]; then
                    other=$leader
                else
                    other=$((leader % n + 1))
                fi
                bench_run "$tag" "PUT $sname, to $via (node $other), $conns conn x depth $depth" \
                    -a "$(client_addr "$other")" -s "$size" -c "$conns" -d "$depth" --topic-prefix "$topic"
                if [[ $size == 1024 && $via == leader && $conns == 1 && $depth == 1 ]]; then
                    # The ordinary client (no TCP_NODELAY) right after the
                    # tuned one, so that the two compare.
                    register_topic "$reg" ordinary-0 || true
                    leader=$(segment_leader "$reg" ordinary-0)
                    bench_run "$tag" "PUT 1 KiB, to leader (node $leader), 1 conn, ordinary client (no TCP_NODELAY)" \
                        -a "$(client_addr "$leader")" -s 1024 -c 1 -d 1 --no-nodelay --topic-prefix ordinary
                fi
            done
        done
    done
    # GETs read a topic filled first with more entries than they can take
    # (counts bounded by the run length), so no GET meets the end (EMPTY).
    register_topic "$reg" get-src-0 || true
    leader=$(segment_leader "$reg" get-src-0)
    RUN_DUR=60s bench_run "$tag" "(fill for the GETs: PUT 1 KiB x 150,000, 16 conn x depth 32)" \
        -a "$(client_addr "$leader")" -s 1024 -c 16 -d 32 -n 150000 --topic-prefix get-src
    bench_run "$tag" "GET, 1 conn, from node 1 (up to 40,000)" \
        -a "$(client_addr 1)" -w get -c 1 -d 1 -n 40000 --topic-prefix get-src
    bench_run "$tag" "GET, 16 conn, from node 1 (up to 100,000)" \
        -a "$(client_addr 1)" -w get -c 16 -d 1 -n 100000 --topic-prefix get-src
    # How soon the cluster takes a write again once the GET load stops.
    local json
    json=$(walrus-bench wait-write -a "$(client_addr 1)" --topic after-get --register --timeout 60s --json 2>/dev/null ||
        echo '{"elapsed_ms": null}')
    jq -c --arg s "$tag" '. + {section: "after-get", label: $s}' <<<"$json" >>"$RESULTS"
    log "  write after the GET load: $json"
    stop_cluster

    # A verified run on a fresh cluster of the same kind (so that neither
    # the runs above nor its own read-back disturb the others): the figures
    # are only worth something if every acknowledged write is really there.
    start_cluster "$n" "$fsync" "$tag-verify"
    wait_ready "$n" "$tag-verify" >/dev/null
    register_topic "$reg" verify-0 || true
    RUN_DUR=2s bench_run "$tag" "PUT 1 KiB, 4 conns x depth 8, --verify" \
        -a "$(client_addr 1)" -s 1024 -c 4 -d 8 --topic-prefix verify --register --verify
    stop_cluster
}

# Kill -9 the leader of a topic's segment; time until a PUT through a
# surviving node is accepted again.
failover() { # fsync
    local tag="failover-${1/:/}"
    CURRENT_SECTION=$tag
    start_cluster 3 "$1" "$tag"
    wait_ready 3 "$tag"
    local topic=fo victim survivor addr
    # Registered through node 2, so the segment leader is (normally) not
    # the Raft leader, then again with node 1 as the segment leader.
    for via in 2 1; do
        addr=$(client_addr "$via")
        register_topic "$addr" "$topic$via" || continue
        victim=$(segment_leader "$addr" "$topic$via")
        survivor=$((victim % 3 + 1))
        [[ -z "${NODE_PIDS[$victim]:-}" ]] && continue
        local raft_leader
        raft_leader=$(walrus-bench request -a "$(client_addr "$survivor")" METRICS | jq -r '.current_leader')
        log "$tag: kill -9 node $victim (segment leader of $topic$via; raft leader $raft_leader)"
        stop_pid "${NODE_PIDS[$victim]}"
        local json
        json=$(walrus-bench wait-write -a "$(client_addr "$survivor")" --topic "$topic$via" --every 10ms --timeout 60s --json ||
            echo '{"elapsed_ms": null}')
        jq -c --arg s "$tag" --argjson v "$victim" --argjson r "${raft_leader:-0}" --argjson sv "$survivor" \
            '. + {section: "failover", label: $s, victim: $v, raft_leader: $r, survivor: $sv}' <<<"$json" >>"$RESULTS"
        log "  writes resumed: $json"
        # One victim per cluster: later kills would measure a 1-of-3 cluster.
        break
    done
    stop_cluster
}

if [[ $HAVE_SERVER == 1 ]] && ! skipped walrus; then
    for fsync in always interval:200; do
        walrus_matrix 1 "$fsync"
        walrus_matrix 3 "$fsync"
    done
else
    log "walrus-server not available: cluster figures skipped"
fi
# The consumer side (issue 11) on a 3-node cluster, --fsync always: READ by
# offset, a group's FETCH + COMMIT loop, the delay from PUT to a
# long-polling reader under PUT load, and PUTB. Each consumer run fills its
# topic itself, then reads and checks every entry (exit 2 and "check":
# FAILED when an entry is missing, repeated, damaged or out of order).
consumers() {
    local tag=consumers-3n-always
    CURRENT_SECTION=$tag
    fsync_probe "before $tag"
    start_cluster 3 always "$tag"
    wait_ready 3 "$tag"
    local reg leader
    reg=$(client_addr 1)
    register_topic "$reg" rd-0 || true
    leader=$(segment_leader "$reg" rd-0)
    bench_run consumers "READ 1 KiB x 1,000 per request, 1 conn, from the segment leader (node $leader)" \
        -a "$(client_addr "$leader")" -w read -s 1024 --fill 200000 --read-batch 1000 --topic-prefix rd
    register_topic "$reg" fe-0 || true
    leader=$(segment_leader "$reg" fe-0)
    bench_run consumers "FETCH + COMMIT 1 KiB x 100 per request, 1 conn, via the segment leader (node $leader)" \
        -a "$(client_addr "$leader")" -w fetch -s 1024 --fill 200000 --read-batch 100 --topic-prefix fe
    register_topic "$reg" fa-0 || true
    leader=$(segment_leader "$reg" fa-0)
    bench_run consumers "FETCH + COMMIT ASYNC 1 KiB x 100 per request, 1 conn, via the segment leader (node $leader)" \
        -a "$(client_addr "$leader")" -w fetch -s 1024 --fill 200000 --read-batch 100 --commit-async --topic-prefix fa
    register_topic "$reg" tl-0 || true
    leader=$(segment_leader "$reg" tl-0)
    bench_run consumers "tail latency: PUT 1 KiB, 16 conn x depth 1, 1 READ WAIT reader (node $leader)" \
        -a "$(client_addr "$leader")" -w tail-latency -s 1024 -c 16 -d 1 --readers 1 --topic-prefix tl
    register_topic "$reg" tf-0 || true
    leader=$(segment_leader "$reg" tf-0)
    bench_run consumers "tail latency: PUT 1 KiB, 16 conn x depth 1, 1 FETCH WAIT reader (node $leader)" \
        -a "$(client_addr "$leader")" -w tail-latency -s 1024 -c 16 -d 1 --readers 1 --tail-fetch --topic-prefix tf
    register_topic "$reg" pb-0 || true
    leader=$(segment_leader "$reg" pb-0)
    bench_run consumers "PUTB 100 x 100 B, 16 conn x depth 1, to the segment leader (node $leader)" \
        -a "$(client_addr "$leader")" -s 100 --batch 100 -c 16 -d 1 --topic-prefix pb
    stop_cluster
}

if [[ $HAVE_SERVER == 1 ]] && ! skipped consumers; then
    consumers
fi
# The cost of TLS and of AUTH on the client port (issue 12): one node,
# --fsync interval:200, so that the CPU bounds a run (under `always` the
# disk does, and hides the crypto's cost); 1 KiB PUT at 16 conn x depth 1
# and 16 x 32, with plain TCP, AUTH, TLS, and TLS + AUTH, one after the
# other on fresh nodes. The certificates are made here with openssl: an
# RSA-2048 CA and a server certificate for 127.0.0.1.
security() {
    local dir=$WORK/security
    mkdir -p "$dir"
    (
        cd "$dir"
        openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=walrus-bench-ca \
            -keyout ca.key -out ca.pem
        openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout server.key -out server.csr
        printf 'subjectAltName=IP:127.0.0.1\n' >san.ext
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
            -extfile san.ext -out server.pem
    ) >/dev/null 2>&1 || {
        log "security: cannot make test certificates with openssl: section skipped"
        return 0
    }
    echo "bench-token-0123456789abcdef write" >"$dir/tokens"
    local mode conns depth addr
    addr=$(client_addr 1)
    for mode in plain auth tls tls+auth; do
        CURRENT_SECTION=security
        EXTRA_SERVER_ARGS=()
        local client=()
        if [[ $mode == *auth* ]]; then
            EXTRA_SERVER_ARGS+=(--auth-token-file "$dir/tokens")
            client+=(--token bench-token-0123456789abcdef)
        fi
        if [[ $mode == *tls* ]]; then
            EXTRA_SERVER_ARGS+=(--tls-cert "$dir/server.pem" --tls-key "$dir/server.key")
            client+=(--tls-ca "$dir/ca.pem")
        fi
        start_cluster 1 interval:200 "security-${mode/+/-}"
        wait_port "$addr" 30 || true
        # The first REGISTER, with the same client settings as the runs.
        RUN_DUR=1s bench_run security-warmup "$mode" -a "$addr" -s 1024 -c 1 -d 1 --register \
            --topic-prefix "warm-${mode/+/-}" "${client[@]}"
        for conns_depth in "16 1" "16 32"; do
            read -r conns depth <<<"$conns_depth"
            bench_run security "PUT 1 KiB, $mode, $conns conn x depth $depth" -a "$addr" -s 1024 \
                -c "$conns" -d "$depth" --register --topic-prefix "sec-${mode/+/-}-$depth" "${client[@]}"
        done
        stop_cluster
        EXTRA_SERVER_ARGS=()
    done
}

if [[ $HAVE_SERVER == 1 ]] && ! skipped security; then
    security
fi
# Replication (issue 10): 3 nodes, 1 KiB PUT to the segment leader of an
# rf=1 and of an rf=3 topic on the same cluster, at 16 conns and 16 x 32,
# with --fsync always and interval:200. Each shape runs twice, the factors
# in swapped order the second time, so that a drift of the host hits both.
# Then failover of an rf=3 segment: kill -9 of its leader, and the time to
# a PUT accepted through a survivor and to a READ, through the survivor, of
# the last entry the dead leader acknowledged.
register_rf() { # addr topic rf
    local answer i
    for ((i = 0; i < 100; i++)); do
        answer=$("$BIN/walrus-bench" request -a "$1" REGISTER "$2" RF "$3" 2>/dev/null) || true
        [[ $answer == OK ]] && return 0
        sleep 0.1
    done
    log "  cannot register $2 with RF $3 at $1: $answer"
    jq -nc --arg s "${CURRENT_SECTION:-}" --arg p "REGISTER $2 RF $3 at $1: $answer" \
        '{section: "problem", label: $s, problem: $p}' >>"$RESULTS"
    return 1
}

replication() {
    local fsync tag reg conns depth round order rf topic leader
    for fsync in always interval:200; do
        tag="replication-3n-${fsync/:/}"
        CURRENT_SECTION=$tag
        fsync_probe "before $tag"
        start_cluster 3 "$fsync" "$tag"
        wait_ready 3 "$tag"
        reg=$(client_addr 1)
        for conns_depth in "16 1" "16 32"; do
            read -r conns depth <<<"$conns_depth"
            for round in 1 2; do
                order="1 3"
                ((round == 2)) && order="3 1"
                for rf in $order; do
                    topic="rf${rf}-c${conns}-d${depth}-r${round}"
                    register_rf "$reg" "$topic-0" "$rf" || continue
                    leader=$(segment_leader "$reg" "$topic-0")
                    bench_run "$tag" "PUT 1 KiB, rf=$rf, to leader (node $leader), $conns conn x depth $depth, round $round" \
                        -a "$(client_addr "$leader")" -s 1024 -c "$conns" -d "$depth" --topic-prefix "$topic"
                done
            done
        done
        stop_cluster
        failover_replicated "$fsync"
    done
}

failover_replicated() { # fsync
    local tag="failover-rf3-${1/:/}"
    CURRENT_SECTION=$tag
    start_cluster 3 "$1" "$tag"
    wait_ready 3 "$tag"
    # Registered through node 2: the segment leader is then (normally) not
    # the Raft leader, whose own failover would add an election.
    local topic=forf3-0 via victim survivor last
    via=$(client_addr 2)
    register_rf "$via" "$topic" 3 || return 0
    victim=$(segment_leader "$via" "$topic")
    survivor=$((victim % 3 + 1))
    RUN_DUR=2s bench_run "$tag-load" "PUT 1 KiB, 4 conn x depth 8, before the kill" \
        -a "$(client_addr "$victim")" -s 1024 -c 4 -d 8 --topic-prefix forf3
    # The entry's offset from its own answer: PUTB (here through
    # walrus-cli put --file) answers `OK <n> <first offset>`. (OFFSETS' end
    # is no substitute: under interval:200 it stops at the synced entries,
    # and pipelined PUTs of the load run may land after ours.)
    local answer
    answer=$(echo last-before-kill | "$BIN/walrus-cli" --addr "$(client_addr "$victim")" put "$topic" --file - 2>&1)
    last=$(awk '$1 == "OK" {print $3}' <<<"$answer")
    if [[ -z $last ]] || ! "$BIN/walrus-bench" wait-read -a "$(client_addr "$victim")" --topic "$topic" --offset "$last" \
        --payload last-before-kill --timeout 2s >/dev/null; then
        log "$tag: PUT answered $answer, and offset ${last:-?} does not hold the entry: no failover measured"
        jq -nc --arg s "$tag" --arg p "PUT answered $answer; offset ${last:-?} did not hold the entry just written" \
            '{section: "problem", label: $s, problem: $p}' >>"$RESULTS"
        stop_cluster
        return 0
    fi
    log "$tag: PUT last-before-kill: $answer (offset $last); kill -9 node $victim"
    stop_pid "${NODE_PIDS[$victim]}"
    "$BIN/walrus-bench" wait-write -a "$(client_addr "$survivor")" --topic "$topic" --every 10ms \
        --timeout 60s --json >"$WORK/$tag-write.json" 2>/dev/null &
    local wpid=$!
    "$BIN/walrus-bench" wait-read -a "$(client_addr "$survivor")" --topic "$topic" --offset "$last" \
        --payload last-before-kill --every 10ms --timeout 60s --json >"$WORK/$tag-read.json" 2>&1 || true
    wait "$wpid" || true
    local write_json read_json
    write_json=$(jq -c . "$WORK/$tag-write.json" 2>/dev/null || echo '{"elapsed_ms": null}')
    read_json=$(jq -c . "$WORK/$tag-read.json" 2>/dev/null ||
        jq -nc --arg e "$(head -c 300 "$WORK/$tag-read.json")" '{elapsed_ms: null, last_error: $e}')
    jq -nc --arg s "$tag" --argjson v "$victim" --argjson sv "$survivor" --argjson w "$write_json" \
        --argjson r "$read_json" --argjson o "$last" \
        '{section: "failover-rf3", label: $s, victim: $v, survivor: $sv, offset: $o, write: $w, read: $r}' >>"$RESULTS"
    log "  writes resumed: $write_json; offset $last read: $read_json"
    stop_cluster
}

if [[ $HAVE_SERVER == 1 ]] && ! skipped replication; then
    replication
fi
if [[ $HAVE_SERVER == 1 ]] && ! skipped failover; then
    failover interval:200
    failover always
fi

fsync_probe "at the end"

# --- the markdown -----------------------------------------------------------------

python3 "$ROOT/scripts/bench_table.py" "$RESULTS" "$DUR" "${WORK}/redis-version" "$OUT" >"$WORK/performance.md"
cp "$WORK/performance.md" "$OUT"
cp "$RESULTS" "${OUT%.md}.jsonl"
log "wrote $OUT (raw results: ${OUT%.md}.jsonl)"
