#!/usr/bin/env bash
# A/B of PUT through a non-leader against PUT to the segment leader, for one
# or more walrus-server binaries, interleaved so that machine noise hits all
# of them alike. 3 nodes, 1 KiB, depth 1, --fsync interval:200 (the case
# where the extra hop weighs most).
#
# Usage: scripts/forward-ab.sh <server-binary>...   (walrus-bench from
#        $WALRUS_BENCH or target/release; ROUNDS=3, DUR=4s, CONNS="1 16",
#        DEPTH=1, SIZE=1024, FSYNC=interval:200)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=${WALRUS_BENCH:-${CARGO_TARGET_DIR:-$ROOT/target}/release/walrus-bench}
ROUNDS=${ROUNDS:-3}
DUR=${DUR:-4s}
FSYNC=${FSYNC:-interval:200}
CONNS=${CONNS:-1 16}
DEPTH=${DEPTH:-1}
SIZE=${SIZE:-1024}
WORK=$(mktemp -d /var/tmp/walrus-fwd.XXXXXX)
PIDS=()
trap 'for p in "${PIDS[@]:-}"; do kill -9 "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT

run_cluster() { # binary dir
    PIDS=()
    # One copy per segment, on builds that have copies, as bench.sh.
    local rf=()
    "$1" --help 2>/dev/null | grep -q -- --replication-factor && rf=(--replication-factor 1)
    for id in 1 2 3; do
        local join=()
        ((id > 1)) && join=(--join 127.0.0.1:28031)
        RUST_LOG=warn WALRUS_MAX_SEGMENT_ENTRIES=50000000 "$1" --node-id $id --data-dir "$2" --raft-host 127.0.0.1 --raft-port $((28030 + id)) \
            --client-host 127.0.0.1 --client-port $((28010 + id)) --fsync "$FSYNC" "${join[@]}" \
            "${rf[@]}" --log-file "$2/node_$id.log" &
        PIDS+=($!)
    done
    for id in 1 2 3; do "$BENCH" wait-write --register -a 127.0.0.1:$((28010 + id)) --topic warm-$id >/dev/null; done
}

rate() { # addr conns topic
    "$BENCH" -q --json -a "$1" -c "$2" -d "$DEPTH" -s "$SIZE" -t "$DUR" --topic-prefix "$3" | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["ops_per_sec"]))'
}

BINS=("$@")
for round in $(seq "$ROUNDS"); do
    # Each round starts with the next build, so that a drift of the host
    # over a round does not always favour the same one; each run gets a
    # fresh data directory (binaries of one name must not share one).
    for k in "${!BINS[@]}"; do
        i=$(((k + round - 1) % ${#BINS[@]}))
        bin=${BINS[$i]}
        dir=$WORK/$round-$i; mkdir -p "$dir"
        run_cluster "$bin" "$dir"
        for conns in $CONNS; do
            topic=t$conns
            "$BENCH" request -a 127.0.0.1:28011 REGISTER "$topic-0" >/dev/null
            leader=$("$BENCH" request -a 127.0.0.1:28011 STATE "$topic-0" | python3 -c 'import json,sys; s=json.load(sys.stdin); print(s.get("leader_node") or 1)' 2>/dev/null || echo 1)
            other=$((leader % 3 + 1))
            d=$(rate 127.0.0.1:$((28010 + leader)) $conns $topic)
            f=$(rate 127.0.0.1:$((28010 + other)) $conns $topic)
            echo "round $round $bin conns $conns depth $DEPTH direct $d forwarded $f ratio $(python3 -c "print(f'{$f/$d:.2f}')")"
        done
        for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
        wait 2>/dev/null || true
    done
done
