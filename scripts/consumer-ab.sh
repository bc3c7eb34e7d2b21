#!/usr/bin/env bash
# Interleaved A/B of the consumer rows of bench.sh (issue 11) on a fresh
# 3-node cluster, `--fsync always`, each build in turn, ROUNDS times, so
# that the machine's changes of mood hit every build alike. A build is a
# directory holding both its walrus-server and its walrus-bench (the bench
# client's own cost is part of what is compared). Prints one line per run;
# take the medians.
#
# Usage: scripts/consumer-ab.sh <build-dir>...
#   ROUNDS=3 DUR=5s FILL=200000
#   RUNS="read fetch putb"   (also: fetch-async, the FETCH + COMMIT ASYNC loop)
set -u
ROUNDS=${ROUNDS:-3}
DUR=${DUR:-5s}
FILL=${FILL:-200000}
RUNS=${RUNS:-read fetch putb}
BUILDS=("$@")
PIDS=()
stop_all() {
    local p
    for p in "${PIDS[@]:-}"; do
        [[ -n "$p" ]] && { kill -9 "$p" 2>/dev/null; wait "$p" 2>/dev/null; }
    done
    PIDS=()
}
trap stop_all EXIT
ops_of() { python3 -c 'import json,sys; print(int(json.load(sys.stdin)["ops_per_sec"]))' 2>/dev/null; }
for r in $(seq 1 "$ROUNDS"); do
    for b in "${BUILDS[@]}"; do
        D=$(mktemp -d /var/tmp/walrus-cab.XXXXXX)
        # One copy per segment, on builds that have copies, as bench.sh.
        rf=()
        "$b/walrus-server" --help 2>/dev/null | grep -q -- --replication-factor &&
            rf=(--replication-factor 1)
        for id in 1 2 3; do
            join=()
            ((id > 1)) && join=(--join 127.0.0.1:28231)
            RUST_LOG=warn WALRUS_MAX_SEGMENT_ENTRIES=50000000 "$b/walrus-server" --node-id "$id" \
                --data-dir "$D" --raft-host 127.0.0.1 --raft-port $((28230 + id)) \
                --client-host 127.0.0.1 --client-port $((28210 + id)) --fsync always \
                "${join[@]}" "${rf[@]}" --log-file "$D/node_$id.log" &
            PIDS+=("$!")
        done
        for id in 1 2 3; do
            "$b/walrus-bench" wait-write -a 127.0.0.1:$((28210 + id)) --topic "ready-$id" \
                --register --timeout 60s >/dev/null 2>&1
        done
        A=127.0.0.1:28211
        for run in $RUNS; do
            case $run in
            read) args=(-w read -s 1024 --fill "$FILL" --read-batch 1000) ;;
            fetch) args=(-w fetch -s 1024 --fill "$FILL" --read-batch 100) ;;
            fetch-async) args=(-w fetch -s 1024 --fill "$FILL" --read-batch 100 --commit-async) ;;
            putb) args=(-s 100 --batch 100 -c 16 -d 1 --register) ;;
            *) echo "unknown run $run" >&2; exit 1 ;;
            esac
            ops=$("$b/walrus-bench" -t "$DUR" -a "$A" "${args[@]}" --topic-prefix "$run-$r" --json \
                2>/dev/null | ops_of)
            echo "round $r $b $run ops/s ${ops:-failed}"
        done
        stop_all
        rm -rf "$D"
    done
done
