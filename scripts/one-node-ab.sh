#!/usr/bin/env bash
# Interleaved A/B of walrus-server builds on one node: PUT 1 KiB to the node
# at 1 conn, 16 conns and 16 conns x depth 32, each build in turn, ROUNDS
# times, so that the machine's changes of mood hit every build alike. Prints
# one line per run; take the medians.
#
# Usage: scripts/one-node-ab.sh <server-binary>...   (ROUNDS=4, DUR=5s,
#        FSYNC=interval:200; walrus-bench from $WALRUS_BENCH or target/release)
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=${WALRUS_BENCH:-${CARGO_TARGET_DIR:-$ROOT/target}/release/walrus-bench}
ROUNDS=${ROUNDS:-4}
DUR=${DUR:-5s}
FSYNC=${FSYNC:-interval:200}
BINS=("$@")
P=
trap '[[ -n "$P" ]] && kill -9 "$P" 2>/dev/null' EXIT
for r in $(seq 1 "$ROUNDS"); do
    for bin in "${BINS[@]}"; do
        D=$(mktemp -d /var/tmp/walrus-ab.XXXXXX)
        RUST_LOG=warn WALRUS_MAX_SEGMENT_ENTRIES=50000000 "$bin" --node-id 1 --data-dir "$D" \
            --raft-port 28131 --client-port 28111 --fsync "$FSYNC" --log-file "$D/log" &
        P=$!
        for _ in $(seq 1 100); do
            "$BENCH" -a 127.0.0.1:28111 --register -t 200ms -c 1 --topic-prefix warm >/dev/null 2>&1 && break
            sleep 0.1
        done
        for cd in "1 1" "16 1" "16 32"; do
            read -r c d <<<"$cd"
            ops=$("$BENCH" -a 127.0.0.1:28111 --register -s 1024 -c "$c" -d "$d" -t "$DUR" \
                --topic-prefix "t$r-$c-$d" --json 2>/dev/null |
                python3 -c 'import json,sys; print(int(json.load(sys.stdin)["ops_per_sec"]))')
            echo "round $r $bin conns $c depth $d ops/s ${ops:-failed}"
        done
        kill -9 "$P"
        wait "$P" 2>/dev/null
        P=
        rm -rf "$D"
    done
done
