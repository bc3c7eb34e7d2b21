#!/usr/bin/env python3
"""A/B of two builds of the WAL bench (benches/wal.rs) on a noisy disk: runs
the two bench executables alternately K times each with the same env and
prints the median entries/s and append latency p99 / p99.9 / max of each
case for each. Usage (from walrus-backends/, so the data lands on that disk):

  WAL_AB_BEFORE=/path/to/old/wal-<hash> WAL_AB_AFTER=/path/to/new/wal-<hash> \
      python3 benches/wal_ab.py K [WAL_BENCH_FILE_BYTES=1048576 ...]

(each executable: `cargo bench --no-run -p walrus-backends --bench wal` in
that build's tree; copy it aside, both builds name it alike)."""
import os, re, subprocess, sys, statistics, datetime
K = int(sys.argv[1]); extra = dict(a.split('=',1) for a in sys.argv[2:])
env = {**os.environ, 'WAL_BENCH_NO_RAW': '1', 'WAL_BENCH_ROUNDS': '1', 'WAL_BENCH_SECS': '1', **extra}
res = {'before': {}, 'after': {}}
order = []
for k in range(K):
    for b in (['before','after'] if k % 2 == 0 else ['after','before']):
        out = subprocess.run([os.environ['WAL_AB_' + b.upper()]], env=env,
                             capture_output=True, text=True).stdout
        for line in out.splitlines():
            m = re.match(r'\| (.+?)\s+\|\s+(\d+) \|\s+[\d.]+ \| append latency p50 (\d+) µs, p99 (\d+) µs, p99.9 (\d+) µs, max (\d+) µs, (\d+) files', line)
            if m:
                case = m.group(1)
                if case not in order: order.append(case)
                res[b].setdefault(case, []).append(tuple(int(x) for x in m.groups()[1:]))
print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {K} runs of each binary alternated, env {extra}; medians over runs")
print("| case | before entries/s | after entries/s | before p99 / p99.9 / max µs | after p99 / p99.9 / max µs | files per run (after) |")
print("|---|---:|---:|---|---|---:|")
for c in order:
    def med(b, i): return int(statistics.median(r[i] for r in res[b].get(c, [(0,)*6])))
    print(f"| {c} | {med('before',0):,} | {med('after',0):,} | {med('before',2)} / {med('before',3)} / {med('before',4)} | {med('after',2)} / {med('after',3)} / {med('after',4)} | {med('after',5)} |")
