#!/usr/bin/env bash
# Gate benchmark: pgbench through the holdfast gate (guard on: every statement parsed and
# classified, audit records written and fsynced before each statement runs) side by side with
# pgbench straight to PostgreSQL and through PgBouncer (session mode), in one run:
#   select-only (-S) and TPC-B-like, each with the simple protocol and with -M prepared (the
#   extended protocol drivers use), CLIENTS clients, DURATION seconds each: TPS, mean and p99
#   latency (from pgbench's per-transaction log), and the proxy's CPU per statement (its
#   process's user+system ticks from /proc/PID/stat before and after the run, divided by the
#   statements pgbench completed: 1 per select-only transaction, 7 per TPC-B one), and its
#   context switches per statement (voluntary + involuntary, summed over the process's threads
#   from /proc/PID/task/*/status before and after: every wake-up of a thread that had gone to
#   sleep is one; threads that ended during the run are not counted); then TPS and
#   peak RSS (VmHWM) of the gate and of PgBouncer with CONNS concurrent connections. For the
#   gate also where a statement's time goes, from its own /metrics scraped before and after
#   each run (histograms `holdfast_gate_statement_*_seconds`: the wait for the audit record, the
#   database's time on the client's messages and on the gate's own, the whole) and its flights
#   to the database and durable waits per statement.
#
# One command (as root, on Debian 12 with Rust): bench/gate.sh    (also: ./run bench gate)
# Env: SCALE=10 DURATION=30 CLIENTS=16 CONNS=500 TLS=0 (1: clients reach the gate over TLS —
#      PgBouncer and direct stay plain, so the TLS cost shows separately) KEEP=0
#      TASKSET=0 (1: the proxy pinned to core 0, PostgreSQL and pgbench to core 1 — how far
#      from direct a proxy is when it has a core of its own)
#      PROFILE=0 (1: `perf record -a -g` — the whole box — during the gate's run of each
#      workload in PROFILE_WORKLOAD, default tpcb (TPC-B simple; a space-separated list of
#      select, tpcb, select-prepared, tpcb-prepared); the top of `perf report --no-children`
#      for the gate process and for the PostgreSQL processes (the backends serving the gate:
#      what the gate's own statements cost the server) goes to
#      bench-out/gate-profile-<workload>.txt; with KEEP=1 the perf data stays in the run's
#      directory, perf-<workload>.data)
#      WORKLOADS="select tpcb select-prepared tpcb-prepared" (a subset for a quick look)
#      HF=path/to/holdfast (a given binary, e.g. an older build to compare; default: build it)
#      SESSION_THREADS=N (the gate's session_threads: its sessions on N single-threaded
#      runtimes; 0 = on the main multi-threaded runtime, as before issue 19's third slice;
#      default: gate.toml's default, one per core)
#      The gate inherits the environment: HOLDFAST_RUNTIME=current (a one-thread main runtime) or
#      TOKIO_WORKER_THREADS=N try other main runtimes than the default (one worker per core).
# Writes bench-out/gate.md.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SCALE="${SCALE:-10}"
DURATION="${DURATION:-30}"
CLIENTS="${CLIENTS:-16}"
CONNS="${CONNS:-500}"
TLS="${TLS:-0}"
KEEP="${KEEP:-0}"
TASKSET="${TASKSET:-0}"
PROFILE="${PROFILE:-0}"
PROFILE_WORKLOAD="${PROFILE_WORKLOAD:-tpcb}"
WORKLOADS="${WORKLOADS:-select tpcb select-prepared tpcb-prepared}"
OUT="$ROOT/bench-out"
mkdir -p "$OUT"
log() { echo "[$(date +%T)] $*" >&2; }
die() { log "FATAL: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (it installs packages and runs PostgreSQL as the postgres user)"

need_apt=()
command -v pgbouncer >/dev/null || need_apt+=(pgbouncer)
command -v python3 >/dev/null || need_apt+=(python3)
ls -d /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql-15 postgresql-client-15)
[ "$PROFILE" = 1 ] && ! command -v perf >/dev/null && need_apt+=(linux-perf)
[ "$TASKSET" = 1 ] && ! command -v taskset >/dev/null && need_apt+=(util-linux)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing ${need_apt[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
PGBIN="$(dirname "$(ls -d /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)")"
# PgBouncer's package starts a service on 6432; this run uses its own instance.
systemctl stop pgbouncer >/dev/null 2>&1 || true

# TASKSET=1: the proxy on core 0, everything else (PostgreSQL, pgbench) on core 1.
PROXY_CPU=() OTHER_CPU=()
if [ "$TASKSET" = 1 ]; then
  [ "$(nproc)" -ge 2 ] || die "TASKSET=1 needs two cores"
  PROXY_CPU=(taskset -c 0) OTHER_CPU=(taskset -c 1)
fi

if [ -z "${HF:-}" ]; then
  log "building holdfast (release)"
  (cd "$ROOT" && cargo build --release -p holdfast -q)
  HF="$ROOT/target/release/holdfast"
fi

W="$(mktemp -d /tmp/holdfast-gatebench.XXXXXX)"
chmod 755 "$W"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PGPORT="$(free_port)" GPORT="$(free_port)" CPORT="$(free_port)" BPORT="$(free_port)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  su postgres -c "$PGBIN/pg_ctl -D $W/pg -m immediate stop" >/dev/null 2>&1 || true
  [ "$KEEP" = 1 ] || rm -rf "$W"
}
trap cleanup EXIT

log "PostgreSQL on 127.0.0.1:$PGPORT, pgbench scale $SCALE"
mkdir -p "$W/pg" && chown postgres: "$W/pg"
echo "bench-pw" > "$W/pw" && chown postgres: "$W/pw"
su postgres -c "$PGBIN/initdb -D $W/pg -A scram-sha-256 -U postgres --pwfile=$W/pw --no-sync -E UTF8 --locale=C" >/dev/null
cat >> "$W/pg/postgresql.conf" <<EOF
port = $PGPORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$W/pg'
max_connections = $((CONNS + 100))
shared_buffers = '256MB'
synchronous_commit = off
EOF
"${OTHER_CPU[@]}" su postgres -c "$PGBIN/pg_ctl -D $W/pg -l $W/pg/server.log -w start" >/dev/null
export PGPASSWORD=bench-pw
PSQL="$PGBIN/psql -h 127.0.0.1 -p $PGPORT -U postgres -X -q"
$PSQL -c "CREATE ROLE bench LOGIN PASSWORD 'bench-pw'; ALTER DATABASE postgres OWNER TO bench; GRANT ALL ON SCHEMA public TO bench"
"$PGBIN/pgbench" -h 127.0.0.1 -p "$PGPORT" -U bench -i -s "$SCALE" -q postgres >/dev/null 2>&1

log "gate on 127.0.0.1:$GPORT (guard on, audit spool on local disk)"
VERIFIER="$(echo bench-pw | "$HF" gate hash-password)"
mkdir -p "$W/gate"
cat > "$W/gate/gate.toml" <<EOF
listen = "127.0.0.1:$GPORT"
control_listen = "127.0.0.1:$CPORT"
state_dir = "state"
require_tls = $([ "$TLS" = 1 ] && echo true || echo false)
$([ -n "${SESSION_THREADS:-}" ] && echo "session_threads = $SESSION_THREADS")
[upstream]
host = "127.0.0.1"
port = $PGPORT
user = "bench"
password_file = "../pw"
sslmode = "disable"
[[person]]
name = "bench"
scram = "$VERIFIER"
EOF
# A fresh gate (and an empty audit spool) for each workload: with no vault to ship to, the
# spool holds at most 256 MiB and the gate then refuses everything (G6) — at ~14,000 selects a
# second that was one 15-s run.
GATE_PID=""
start_gate() {
  if [ -n "$GATE_PID" ]; then
    kill "$GATE_PID" 2>/dev/null || true
    wait "$GATE_PID" 2>/dev/null || true
    rm -rf "$W/gate/state"
  fi
  "${PROXY_CPU[@]}" "$HF" gate serve --config "$W/gate/gate.toml" 2>> "$W/gate.log" &
  GATE_PID=$!
  PIDS+=("$GATE_PID")
  for i in $(seq 50); do "$PGBIN/pg_isready" -h 127.0.0.1 -p "$GPORT" -q && return; sleep 0.2; done
}
start_gate

log "PgBouncer (session mode) on 127.0.0.1:$BPORT"
mkdir -p "$W/bouncer" && chown postgres: "$W/bouncer"
cat > "$W/bouncer/pgbouncer.ini" <<EOF
[databases]
postgres = host=127.0.0.1 port=$PGPORT dbname=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BPORT
auth_type = scram-sha-256
auth_file = $W/bouncer/userlist.txt
pool_mode = session
max_client_conn = $((CONNS + 100))
default_pool_size = $((CONNS + 50))
max_db_connections = $((CONNS + 50))
logfile = $W/bouncer/pgbouncer.log
pidfile = $W/bouncer/pgbouncer.pid
unix_socket_dir =
EOF
echo '"bench" "bench-pw"' > "$W/bouncer/userlist.txt"
chown -R postgres: "$W/bouncer"
"${PROXY_CPU[@]}" su postgres -s /bin/sh -c "pgbouncer -d $W/bouncer/pgbouncer.ini"
sleep 1
BOUNCER_PID="$(cat "$W/bouncer/pgbouncer.pid")"
PIDS+=("$BOUNCER_PID")
for i in $(seq 50); do "$PGBIN/pg_isready" -h 127.0.0.1 -p "$GPORT" -q && break; sleep 0.2; done

SSL_GATE="disable"; [ "$TLS" = 1 ] && SSL_GATE="require"
TICK="$(getconf CLK_TCK)"
cpu_ticks() { # user+system ticks of a process (fields 14 and 15 of /proc/PID/stat)
  [ -n "$1" ] || { echo 0; return; }
  awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}
ctx_switches() { # voluntary and involuntary context switches of all threads of a process
  [ -n "$1" ] || { echo "0 0"; return; }
  cat /proc/"$1"/task/*/status 2>/dev/null \
    | awk '/^voluntary_ctxt_switches/ {v += $2} /^nonvoluntary_ctxt_switches/ {n += $2} END {print v + 0, n + 0}'
}
scrape() { # the gate's /metrics (HTTPS, its self-signed certificate) → one line of name=value
  python3 - "$CPORT" <<'PY' 2>/dev/null || echo ""
import ssl, sys, urllib.request
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
text = urllib.request.urlopen(f"https://127.0.0.1:{sys.argv[1]}/metrics", context=ctx, timeout=5).read().decode()
keep = ("holdfast_gate_server_flights_total", "holdfast_gate_audit_waits_total")
out = []
for line in text.splitlines():
    if line.startswith("#") or " " not in line:
        continue
    name, value = line.rsplit(" ", 1)
    if name in keep or (name.startswith("holdfast_gate_statement_") and (name.endswith("_sum") or name.endswith("_count"))):
        out.append(f"{name}={value}")
print(" ".join(out))
PY
}
run() { # name port sslmode mode pid-of-proxy(or empty)
  local name="$1" port="$2" ssl="$3" mode="$4" pid="$5" flag="-M simple" per_tx=7
  [ "$mode" = select ] && flag="-S -M simple" per_tx=1
  [ "$mode" = select-prepared ] && flag="-S -M prepared" per_tx=1
  [ "$mode" = tpcb-prepared ] && flag="-M prepared"
  rm -rf "$W/log-$name-$mode" && mkdir -p "$W/log-$name-$mode"
  log "  $mode via $name"
  local before perf_pid="" cs_before m_before=""
  [ "$name" = gate ] && m_before="$(scrape)"
  before="$(cpu_ticks "$pid")"
  cs_before="$(ctx_switches "$pid")"
  if [ "$PROFILE" = 1 ] && [ "$name" = gate ] && [[ " $PROFILE_WORKLOAD " == *" $mode "* ]]; then
    perf record -a -g -o "$W/perf-$mode.data" -- sleep "$DURATION" >/dev/null 2>&1 &
    perf_pid=$!
  fi
  (cd "$W/log-$name-$mode" && PGSSLMODE="$ssl" "${OTHER_CPU[@]}" "$PGBIN/pgbench" -h 127.0.0.1 -p "$port" -U bench -n $flag \
     -c "$CLIENTS" -j 2 -T "$DURATION" --log --log-prefix=tx postgres > out.txt 2>&1) \
     || { cat "$W/log-$name-$mode/out.txt" >&2; die "pgbench via $name failed"; }
  local after cs_after m_after=""
  after="$(cpu_ticks "$pid")"
  cs_after="$(ctx_switches "$pid")"
  [ "$name" = gate ] && m_after="$(scrape)"
  if [ -n "$perf_pid" ]; then
    wait "$perf_pid" || true
    local prof="$OUT/gate-profile-$mode.txt" comms
    # The gate's threads by name (its session runtimes, the audit writer, …): perf's --pid
    # filter missed a process started just before the recording.
    comms="$(cat /proc/"$pid"/task/*/comm 2>/dev/null | sort -u | paste -sd, -)"
    {
      echo "# perf record -a -g during the gate's $mode run ($CLIENTS clients, ${DURATION} s); perf report --no-children"
      echo "## samples per command (the whole box)"
      perf report -i "$W/perf-$mode.data" --stdio --no-children --sort comm -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -15
      echo "## the gate process (pid $pid: its threads $comms), by symbol"
      perf report -i "$W/perf-$mode.data" --stdio --no-children --comms "$comms" --percentage relative --sort dso,sym \
        --percent-limit 0.4 -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -60
      echo "## the PostgreSQL processes (backends serving the gate, and the server's own), by symbol"
      perf report -i "$W/perf-$mode.data" --stdio --no-children --comms postgres --percentage relative --sort dso,sym \
        --percent-limit 0.4 -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -60
      echo "## the PostgreSQL processes: callers of their top symbols (frame pointers; Debian's build may cut chains short)"
      perf report -i "$W/perf-$mode.data" --stdio --no-children --comms postgres --percentage relative --sort sym \
        --percent-limit 3 -g caller,2,callee,function,percent 2>/dev/null | grep -v '^#' | grep -v '^$' | head -80
    } > "$prof" || true
    log "  profile ($mode): $prof"
  fi
  python3 - "$W/log-$name-$mode" "$name" "$mode" "$((after - before))" "$TICK" "$per_tx" "$pid" $cs_before $cs_after "$m_before" "$m_after" >> "$W/results.tsv" <<'PY'
import glob, re, sys
d, name, mode, ticks, tick, per_tx, pid, vb, nb, va, na, mb, ma = sys.argv[1:]
out = open(d + "/out.txt").read()
tps = float(re.search(r"tps = ([0-9.]+)", out).group(1))
txs = int(re.search(r"number of transactions actually processed: ([0-9]+)", out).group(1))
lat = []
for f in glob.glob(d + "/tx*"):
    for line in open(f):
        p = line.split()
        if len(p) >= 3:
            lat.append(int(p[2]))
lat.sort()
p99 = lat[int(len(lat) * 0.99)] / 1000 if lat else float("nan")
mean = sum(lat) / len(lat) / 1000 if lat else float("nan")
stmts = txs * int(per_tx)
cpu = int(ticks) / int(tick) * 1e6 / stmts if pid and stmts else float("nan")
vcs = (int(va) - int(vb)) / stmts if pid and stmts else float("nan")
ncs = (int(na) - int(nb)) / stmts if pid and stmts else float("nan")
# The gate's own account (its /metrics before and after): per statement it saw, the mean wait
# for the audit record, the database's time on the client's messages and on the gate's own,
# the whole; per statement pgbench completed, flights to the database and durable waits.
def parse(s):
    return {k: float(v) for k, v in (kv.split("=", 1) for kv in s.split())}
b, a = parse(mb), parse(ma)
def delta(k):
    return a.get(k, float("nan")) - b.get(k, float("nan"))
t = "holdfast_gate_statement_"
n = delta(t + "seconds_count")
per = lambda k: delta(t + k + "_sum") / n * 1e6 if n and n == n else float("nan")
split = [per("audit_wait_seconds"), per("server_seconds"), per("own_seconds"), per("seconds")]
trips = delta("holdfast_gate_server_flights_total") / stmts if stmts else float("nan")
waits = delta("holdfast_gate_audit_waits_total") / stmts if stmts else float("nan")
extra = "\t".join(f"{x:.1f}" for x in split) + f"\t{trips:.2f}\t{waits:.2f}"
print(f"{name}\t{mode}\t{tps:.0f}\t{mean:.3f}\t{p99:.3f}\t{cpu:.1f}\t{vcs:.2f}\t{ncs:.2f}\t{extra}")
PY
}
: > "$W/results.tsv"
for mode in $WORKLOADS; do
  run direct "$PGPORT" disable "$mode" ""
  start_gate
  run gate "$GPORT" "$SSL_GATE" "$mode" "$GATE_PID"
  run pgbouncer "$BPORT" disable "$mode" "$BOUNCER_PID"
done

rss_kb() { awk '/VmHWM/ {print $2}' "/proc/$1/status" 2>/dev/null || { log "process $1 is gone"; echo 0; }; }
log "memory: $CONNS concurrent connections (pgbench -S, 10 s) through the gate, then PgBouncer"
start_gate
# A run that failed (connections refused, clients aborted) measured fewer connections than it
# names: its exit status goes into the report instead of being hidden.
GATE_CONN_RC=0
PGSSLMODE="$SSL_GATE" "${OTHER_CPU[@]}" "$PGBIN/pgbench" -h 127.0.0.1 -p "$GPORT" -U bench -n -S -c "$CONNS" -j 2 -T 10 postgres > "$W/conns-gate.txt" 2>&1 || GATE_CONN_RC=$?
GATE_RSS="$(rss_kb "$GATE_PID")"
BOUNCER_CONN_RC=0
"${OTHER_CPU[@]}" "$PGBIN/pgbench" -h 127.0.0.1 -p "$BPORT" -U bench -n -S -c "$CONNS" -j 2 -T 10 postgres > "$W/conns-bouncer.txt" 2>&1 || BOUNCER_CONN_RC=$?
BOUNCER_RSS="$(rss_kb "$BOUNCER_PID")"
[ "$GATE_CONN_RC" = 0 ] || log "pgbench through the gate with $CONNS connections FAILED (exit $GATE_CONN_RC): $(tail -3 "$W/conns-gate.txt")"
[ "$BOUNCER_CONN_RC" = 0 ] || log "pgbench through PgBouncer with $CONNS connections FAILED (exit $BOUNCER_CONN_RC): $(tail -3 "$W/conns-bouncer.txt")"
# pgbench prints no tps line when no transaction completed (e.g. connecting all CONNS clients
# took longer than the run): that is reported as 0, not a reason for this script to stop.
conn_figure() { # file → "TPS (connecting took N ms)"
  local tps ms
  tps="$(grep -o 'tps = [0-9.]*' "$1" | head -1 | cut -d' ' -f3 || true)"
  ms="$(grep -o 'initial connection time = [0-9.]*' "$1" | head -1 | cut -d' ' -f5 || true)"
  echo "${tps:-0} TPS (connecting the clients took ${ms:-?} ms)"
}
GATE_CONN_TPS="$(conn_figure "$W/conns-gate.txt")"
BOUNCER_CONN_TPS="$(conn_figure "$W/conns-bouncer.txt")"

python3 - "$W/results.tsv" "$OUT/gate.md" "$CLIENTS" "$DURATION" "$SCALE" "$TLS" "$CONNS" "$GATE_RSS" "$BOUNCER_RSS" "${GATE_CONN_TPS:-?}" "${BOUNCER_CONN_TPS:-?}" "$GATE_CONN_RC" "$BOUNCER_CONN_RC" "$TASKSET" "$WORKLOADS" <<'PY'
import sys
res, out, clients, dur, scale, tls, conns, grss, brss, gct, bct, grc, brc, taskset, workloads = sys.argv[1:]
rows = [l.rstrip("\n").split("\t") for l in open(res) if l.strip()]
by = {(r[0], r[1]): tuple(float(x) for x in r[2:8]) for r in rows}
modes = workloads.split()
cores = ("the proxy pinned to core 0, PostgreSQL and pgbench to core 1 (TASKSET=1)" if taskset == "1"
         else "2 cores shared by PostgreSQL, pgbench and the proxy")
lines = [f"# Gate benchmark\n",
         f"pgbench -c {clients} -j 2 -T {dur}, scale {scale}; simple = -M simple, prepared = -M prepared (the extended protocol drivers use); {cores}; gate over TLS: {'yes' if tls == '1' else 'no'}. CPU per statement: the proxy process's user+system time over the run ÷ statements completed (select-only 1 per transaction, TPC-B 7); context switches per statement: the proxy's threads' voluntary + involuntary switches over the run ÷ the same statements.\n",
         "| workload | gate / direct | PgBouncer / direct | gate / PgBouncer | gate p99 added | PgBouncer p99 added | gate CPU µs/stmt | PgBouncer CPU µs/stmt | gate ctx sw/stmt (vol + invol) | PgBouncer ctx sw/stmt |",
         "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
for mode in modes:
    d, g, b = by.get(("direct", mode)), by.get(("gate", mode)), by.get(("pgbouncer", mode))
    if not (d and g and b):
        continue
    lines.append(f"| {mode} | {g[0]/d[0]:.2f} | {b[0]/d[0]:.2f} | {g[0]/b[0]:.2f} | {g[2]-d[2]:+.2f} ms | {b[2]-d[2]:+.2f} ms | {g[3]:.1f} | {b[3]:.1f} | {g[4]:.2f} + {g[5]:.2f} | {b[4]:.2f} + {b[5]:.2f} |")
lines += ["", "Where a statement's time goes through the gate (its /metrics histograms, means per statement, µs): waiting for the audit record to be durable, for the database's answers to the client's messages, for its answers to the gate's own (savepoint, counters read and check, release), and the whole from the client's first message to its ReadyForQuery (the rest: the gate's CPU and wake-ups); flights to the database and durable waits per statement.", "",
          "| workload | audit wait | database, client's | database, gate's own | whole | flights/stmt | durable waits/stmt |",
          "|---|---:|---:|---:|---:|---:|---:|"]
for mode in modes:
    g = [r for r in rows if r[0] == "gate" and r[1] == mode]
    if g and len(g[0]) >= 14:
        x = g[0][8:14]
        lines.append(f"| {mode} | {x[0]} | {x[1]} | {x[2]} | {x[3]} | {x[4]} | {x[5]} |")
lines += ["", "| workload | path | TPS | mean ms | p99 ms |", "|---|---|---:|---:|---:|"]
for mode in modes:
    for name in ("direct", "gate", "pgbouncer"):
        v = by.get((name, mode))
        if v:
            lines.append(f"| {mode} | {name} | {v[0]:.0f} | {v[1]:.3f} | {v[2]:.3f} |")
def conns_figure(rss, tps, rc):
    if rc != "0":
        return f"pgbench FAILED (exit {rc}), so not a measurement at {conns} connections; peak RSS {int(rss)/1024:.1f} MB"
    return f"{tps}, peak RSS {int(rss)/1024:.1f} MB"
lines += ["", f"{conns} concurrent connections (pgbench -S -c {conns}, 10 s): gate {conns_figure(grss, gct, grc)}; PgBouncer {conns_figure(brss, bct, brc)}."]
open(out, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
