"""`python -m bench COMMAND`: benchmarks and operations tools.

  kernel   the same transfer workload through the Cython kernel and the
           plain-Python reference, durable; transfers/s and their ratio
  e2e      Pay over gRPC at N concurrent clients against an echo servicer
           on the same gRPC stack, measured in the same run; ratios

Each command has --help and --json FILE.
"""

import importlib
import sys

COMMANDS = {
    "kernel": "bench.kernel",
    "e2e": "bench.e2e",
}


def main():
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help") or sys.argv[1] not in COMMANDS:
        print(__doc__.strip())
        return 0 if len(sys.argv) >= 2 and sys.argv[1] in ("-h", "--help") else 2
    module = importlib.import_module(COMMANDS[sys.argv[1]])
    return module.main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
