#!/bin/bash
# Time from spawning a brand-new single node (empty data directory, no
# --join) until it answers METRICS naming a consensus leader. Such a node
# listens for an existing cluster before it bootstraps (docs/architecture.md,
# "Storage identity"); this measures what that costs.
#
# usage: scripts/first-start-latency.sh [walrus-server binary] [runs]
set -euo pipefail
BIN=${1:-target/debug/walrus-server}
RUNS=${2:-5}
for i in $(seq "$RUNS"); do
  D=$(mktemp -d)
  CP=$((20000 + RANDOM % 20000)); RP=$((CP + 1))
  T0=$(date +%s%N)
  "$BIN" --data-dir "$D" --client-port "$CP" --raft-port "$RP" >"$D/log" 2>&1 &
  PID=$!
  until python3 - "$CP" <<'PY' 2>/dev/null
import json, socket, struct, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1)
s.sendall(struct.pack("<I", 7) + b"METRICS")
n = struct.unpack("<I", s.recv(4))[0]
d = b""
while len(d) < n:
    d += s.recv(n - len(d))
sys.exit(0 if json.loads(d).get("current_leader") is not None else 1)
PY
  do sleep 0.01; done
  T1=$(date +%s%N)
  echo "run $i: $(((T1 - T0) / 1000000)) ms"
  kill "$PID"; wait "$PID" 2>/dev/null || true
  rm -rf "$D"
done
