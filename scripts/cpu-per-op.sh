#!/usr/bin/env bash
# CPU time and context switches per PUT of each node of a 3-node cluster,
# for PUTs to the segment leader (node 1) and through node 2, read from
# /proc/<pid>/stat and /proc/<pid>/task/*/status around one run of each.
#
# Usage: scripts/cpu-per-op.sh <server-binary>   (C=1 connections, DUR=3s,
#        FSYNC=interval:200; walrus-bench from $WALRUS_BENCH or target/release)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$1
BENCH=${WALRUS_BENCH:-${CARGO_TARGET_DIR:-$ROOT/target}/release/walrus-bench}
C=${C:-1}
DUR=${DUR:-3}
FSYNC=${FSYNC:-interval:200}
WORK=$(mktemp -d /var/tmp/walrus-cpu.XXXXXX)
PIDS=()
trap 'for p in "${PIDS[@]:-}"; do kill -9 "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
for id in 1 2 3; do
    join=()
    ((id > 1)) && join=(--join 127.0.0.1:28031)
    RUST_LOG=warn WALRUS_MAX_SEGMENT_ENTRIES=50000000 "$BIN" --node-id $id --data-dir "$WORK" \
        --raft-host 127.0.0.1 --raft-port $((28030 + id)) --client-host 127.0.0.1 \
        --client-port $((28010 + id)) --fsync "$FSYNC" "${join[@]}" --log-file "$WORK/node_$id.log" &
    PIDS+=($!)
done
for id in 1 2 3; do "$BENCH" wait-write --register -a 127.0.0.1:$((28010 + id)) --topic warm-$id >/dev/null; done
"$BENCH" request -a 127.0.0.1:28011 REGISTER cpu-0 >/dev/null
# pid, CPU ticks (utime+stime), context switches of all threads
snapshot() {
    for p in "${PIDS[@]}"; do
        echo "$p $(awk '{print $14 + $15}' /proc/$p/stat) $(cat /proc/$p/task/*/status | awk '/^(non)?voluntary_ctxt_switches/ {n += $2} END {print n}')"
    done
}
tick=$(getconf CLK_TCK)
for via in 1 2; do
    before=$(snapshot)
    ops=$("$BENCH" -q --json -a 127.0.0.1:$((28010 + via)) -c "$C" -d 1 -t "${DUR}s" --topic-prefix cpu |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["ops"])')
    after=$(snapshot)
    python3 - "$via" "$ops" "$DUR" "$tick" "$before" "$after" <<'PY'
import sys
via, ops, dur, tick = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
rows = []
for i, (a, b) in enumerate(zip(sys.argv[5].split("\n"), sys.argv[6].split("\n"))):
    a, b = a.split(), b.split()
    cpu_us = (int(b[1]) - int(a[1])) * 1e6 / tick / ops
    switches = (int(b[2]) - int(a[2])) / ops
    rows.append(f"node {i + 1}: {cpu_us:.1f} us CPU, {switches:.2f} switches")
print(f"PUT via node {via}: {ops / dur:.0f}/s; per PUT: " + "; ".join(rows))
PY
done
