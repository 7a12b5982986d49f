"""Risk: velocity limits, blacklists, and patterns flagged for review.

Pure Python that decides what to ask of the kernel: a velocity limit is a
counter take (RISK_VELOCITY) linked to the operation it limits, so the
kernel checks and counts it in the same write transaction and concurrent
requests cannot slip past it; a decline names the limit's rule. Blacklists
are checked before an operation is built; flags only record, never decline.

  rules.py      velocity limits and flag thresholds: typed, validated, stored as JSON
  blacklist.py  permanent or frozen-until entries, with a reason
  flags.py      many small sales in a short time, unusual hours: flags for staff
"""
