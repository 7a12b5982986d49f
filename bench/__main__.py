"""`python -m bench COMMAND`: benchmarks and operations tools.

  kernel   the same transfer workload through the Cython kernel and the
           plain-Python reference, durable; transfers/s and their ratio
  e2e      Pay over gRPC (unary or stream, closed or open loop) at N
           terminals against an echo servicer on the same gRPC stack,
           measured in the same run; ratios
  seed     a data directory of N realistic transactions, through the kernel
  soak     a long mixed workload that checks every answer against its own
           model of the balances, RSS and latency drift, then the audit
  crash    SIGKILL under load K times; every acknowledged answer and the
           audit checked after each restart
  nats-outage  NATS servers lost under load, one then two, then back:
           pauses, acknowledgements without a quorum (none), recovery
  log-content  bytes per payment in the replicated log and a follower's
           CPU for it, against an operation log
  backup   Pay under load while `python -m core.backup snapshot` copies the
           directory: throughput during the snapshot against without
  failover three replicated nodes on a NATS JetStream cluster: kill -9 the
           leader and delete its data under load, N times; RTO per cycle,
           every acknowledged answer read back, audits, nodes identical
  console  the web console's page times (card, dashboard, error queue) on a
           seeded directory, and Pay's p99 with and without the console in use

Each command has --help, --json FILE and (except kernel) --chart FILE.png.
"""

import importlib
import sys

COMMANDS = {
    "kernel": "bench.kernel",
    "e2e": "bench.e2e",
    "seed": "bench.seed",
    "soak": "bench.soak",
    "crash": "bench.crash",
    "failover": "bench.failover",
    "backup": "bench.backup",
    "nats-outage": "bench.nats_outage",
    "log-content": "bench.log_content",
    "console": "bench.console",
}


def main():
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help") or sys.argv[1] not in COMMANDS:
        print(__doc__.strip())
        return 0 if len(sys.argv) >= 2 and sys.argv[1] in ("-h", "--help") else 2
    module = importlib.import_module(COMMANDS[sys.argv[1]])
    return module.main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
