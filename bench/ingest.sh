#!/usr/bin/env bash
# Ingest benchmark: holdfast's store vs restic on (a) a pgbench data directory and (b) 1 GB of
# random data, then a second ingest after changing 1 % of the data directory's pages.
# One command: bench/ingest.sh   (env: BENCH_WORK=/tmp/holdfast-bench SCALE=130 RANDOM_MB=1024)
# Writes bench-out/ingest.md (Markdown) and bench-out/ingest.json (raw figures).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${BENCH_WORK:-/tmp/holdfast-bench}"
SCALE="${SCALE:-130}"
RANDOM_MB="${RANDOM_MB:-1024}"
OUT="$ROOT/bench-out"
mkdir -p "$OUT"

log() { echo "[$(date +%T)] $*" >&2; }

need_apt=()
command -v restic >/dev/null || need_apt+=(restic)
[ -x /usr/bin/time ] || need_apt+=(time)
ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1 || need_apt+=(postgresql postgresql-contrib)
command -v python3 >/dev/null || need_apt+=(python3)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing ${need_apt[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
PGBIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"

log "building store-bench (release)"
(cd "$ROOT" && cargo build --release -p store --example store-bench -q)
HF="$ROOT/target/release/examples/store-bench"

# Stop a cluster we started if the script dies half-way.
cleanup() { [ -f "$WORK/pg/data/postmaster.pid" ] && runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/pg/data" -m immediate stop >/dev/null 2>&1 || true; }
trap cleanup EXIT

rm -rf "$WORK"
mkdir -p "$WORK/pg/sock" "$WORK/random"
chown -R postgres: "$WORK/pg"
chmod 755 "$WORK"

pg() { runuser -u postgres -- "$@"; }
pg_start() { pg "$PGBIN/pg_ctl" -D "$WORK/pg/data" -l "$WORK/pg/log" -w -o "-k $WORK/pg/sock -c listen_addresses= -c fsync=off -c max_wal_size=256MB" start >/dev/null; }
pg_stop() { pg "$PGBIN/pg_ctl" -D "$WORK/pg/data" -m fast -w stop >/dev/null; }

log "initdb + pgbench -i -s $SCALE"
pg "$PGBIN/initdb" -D "$WORK/pg/data" --no-sync -A trust -U postgres >/dev/null
pg_start
pg "$PGBIN/pgbench" -h "$WORK/pg/sock" -U postgres -i -s "$SCALE" -q postgres 2>&1 | tail -1 >&2
pg "$PGBIN/psql" -h "$WORK/pg/sock" -U postgres -qc "CHECKPOINT" postgres
pg_stop
PGDATA_DIR="$WORK/pg/data"

log "writing $RANDOM_MB MB of random data"
for i in $(seq 1 8); do head -c $((RANDOM_MB * 1024 * 1024 / 8)) /dev/urandom > "$WORK/random/part$i.bin"; done

export RESTIC_PASSWORD_FILE="$WORK/restic-password"
echo "benchmark-password" > "$RESTIC_PASSWORD_FILE"

# run <tool> <dataset-name> <source-dir> <round>: prints "seconds rss_kb" and appends JSON.
size_of() { du -sb "$1" | cut -f1; }
warm() { find "$1" -type f -exec cat {} + > /dev/null 2>&1 || true; }
run() {
  local tool=$1 name=$2 src=$3 round=$4 repo="$WORK/$1-$2" tfile="$WORK/time-$1-$2-$4"
  warm "$src"
  local before=0
  [ -d "$repo" ] && before=$(size_of "$repo")
  case $tool in
    holdfast1|holdfast4)
      HOLDFAST_PAGES_PER_CHUNK=${tool#holdfast} /usr/bin/time -v -o "$tfile" "$HF" "$src" "$repo" "$name-$round" > "$WORK/out-$tool-$name-$round" ;;
    holdfast)
      /usr/bin/time -v -o "$tfile" "$HF" "$src" "$repo" "$name-$round" > "$WORK/out-$tool-$name-$round" ;;
    restic)
      [ -d "$repo" ] || restic -r "$repo" init --repository-version 2 -q >/dev/null
      /usr/bin/time -v -o "$tfile" restic -r "$repo" --cache-dir "$WORK/restic-cache" --compression auto backup -q "$src" > "$WORK/out-$tool-$name-$round" ;;
  esac
  local wall rss after
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; print s}' "$tfile")
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$tfile")
  after=$(size_of "$repo")
  echo "{\"tool\":\"$tool\",\"dataset\":\"$name\",\"round\":$round,\"input\":$(size_of "$src"),\"seconds\":$wall,\"rss_kb\":$rss,\"stored_total\":$after,\"stored_new\":$((after - before))}" >> "$OUT/ingest.jsonl"
  log "$tool $name round $round: ${wall}s, rss ${rss} kB, repo $after bytes (+$((after - before)))"
}

rm -f "$OUT/ingest.jsonl"
for ds in pgdata random; do
  src=$PGDATA_DIR; [ $ds = random ] && src="$WORK/random"
  for tool in holdfast restic; do run $tool $ds "$src" 1; done
  # The same store with 1 and 16 pages per relation chunk: how chunk size trades size for dedup.
  [ $ds = pgdata ] && run holdfast1 $ds "$src" 1 && run holdfast4 $ds "$src" 1
done

log "changing 1 % of the data directory's relation pages"
CHANGED=$(python3 - "$PGDATA_DIR" <<'PY'
import os, random, sys
root = sys.argv[1]
random.seed(42)
pages = []
for base in ("base", "global"):
    for d, _, files in os.walk(os.path.join(root, base)):
        for f in files:
            p = os.path.join(d, f)
            stem = f.split(".")[0].split("_")[0]
            if stem.isdigit():
                pages += [(p, i) for i in range(os.path.getsize(p) // 8192)]
chosen = random.sample(pages, max(1, len(pages) // 100))
for p, i in chosen:
    with open(p, "r+b") as fh:
        fh.seek(i * 8192 + 4000)
        b = fh.read(1)
        fh.seek(i * 8192 + 4000)
        fh.write(bytes([b[0] ^ 0xFF]))
print(len(chosen) * 8192)
PY
)
log "changed $CHANGED bytes"
for tool in holdfast restic holdfast1 holdfast4; do run $tool pgdata "$PGDATA_DIR" 2; done

python3 - "$OUT" "$CHANGED" "$(nproc)" <<'PY'
import json, sys
out, changed, cores = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rows = [json.loads(l) for l in open(f"{out}/ingest.jsonl")]
get = lambda t, d, r: next(x for x in rows if x["tool"] == t and x["dataset"] == d and x["round"] == r)
mb = lambda b: b / 1e6
lines = [
    "# Ingest benchmark: holdfast store vs restic",
    "",
    f"Machine: {cores} cores (shared), page cache warm for both tools. restic: `--compression auto`, repository v2.",
    "",
    "`holdfast` = default chunking (16 pages per relation chunk); `holdfast1` / `holdfast4` = 1 / 4 pages per relation chunk, for comparison.",
    "",
    "| dataset | input MB | tool | seconds | MB/s | stored MB | peak RSS MB |",
    "|---|---:|---|---:|---:|---:|---:|",
]
for d in ("pgdata", "random"):
    for t in ("holdfast", "restic", "holdfast1", "holdfast4"):
        if d == "random" and t in ("holdfast1", "holdfast4"):
            continue
        x = get(t, d, 1)
        lines.append(f"| {d} | {mb(x['input']):.0f} | {t} | {x['seconds']:.1f} | {mb(x['input'])/x['seconds']:.0f} | {mb(x['stored_total']):.1f} | {x['rss_kb']/1024:.0f} |")
lines += ["", "| dataset | throughput holdfast/restic | stored holdfast/restic | RSS holdfast/restic |", "|---|---:|---:|---:|"]
for d in ("pgdata", "random"):
    h, r = get("holdfast", d, 1), get("restic", d, 1)
    lines.append(f"| {d} | {r['seconds']/h['seconds']:.2f}× | {h['stored_total']/r['stored_total']:.2f} | {h['rss_kb']/r['rss_kb']:.2f} |")
lines += ["", f"Second ingest of pgdata after flipping one byte in 1 % of relation pages ({mb(changed):.1f} MB of pages changed):", "",
          "| tool | seconds | new stored MB | new / changed pages | new / input |", "|---|---:|---:|---:|---:|"]
for t in ("holdfast", "restic", "holdfast1", "holdfast4"):
    x = get(t, "pgdata", 2)
    lines.append(f"| {t} | {x['seconds']:.1f} | {mb(x['stored_new']):.1f} | {x['stored_new']/changed:.2f} | {100*x['stored_new']/x['input']:.2f} % |")
open(f"{out}/ingest.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
