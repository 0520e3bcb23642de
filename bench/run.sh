#!/usr/bin/env bash
# Benchmarks, each side by side with the tool a user would otherwise pick, in one run.
#   bench/run.sh ingest    store ingest vs restic (pgbench data dir + random data, 1 % change)
#   bench/run.sh capture   base backup vs pg_basebackup and pgBackRest, WAL latency, sync-mode cost
#   bench/run.sh restore   back to just before a TRUNCATE at two sizes: warm standby, holdfast restore,
#                          pgBackRest, pg_basebackup + cp
#   bench/run.sh s3        vault on Ceph RGW with Object Lock vs pgBackRest repo-type s3: backup, restore, bytes, requests
#   bench/run.sh gate      pgbench through the gate vs direct vs PgBouncer: TPS, p99, CPU/statement, 500-conn TPS+RSS
#   bench/run.sh detect    WAL decode + detect throughput on one core vs pg_waldump (>= 1 GB)
#   bench/run.sh repair    repair of one merchant vs full PITR: time to data back, work lost since
#   bench/run.sh           all of them
# Reports go to bench-out/*.md.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-all}" in
  ingest) exec bash bench/ingest.sh ;;
  capture) exec bash bench/capture.sh ;;
  restore) exec bash bench/restore.sh ;;
  gate) exec bash bench/gate.sh ;;
  detect) exec bash bench/detect.sh ;;
  repair) exec bash bench/repair.sh ;;
  s3) exec bash bench/s3.sh ;;
  all) bash bench/ingest.sh && bash bench/capture.sh && bash bench/restore.sh && bash bench/detect.sh && bash bench/gate.sh && bash bench/repair.sh && bash bench/s3.sh ;;
  *) sed -n '2,12p' "$0"; exit 2 ;;
esac
