"""Loyalty: points earning rules, check-in and tasks, tiers, expiry jobs, gifts, partners.

Rules and catalogues are pure Python here; every deduction of points and
every stock decrement happens in the kernel (core/kernel.pyx), in the same
write transaction as the sale or redemption it belongs to.

  rules.py     the rules, their validation, their storage
  earning.py   points of a sale, itemised
  jobs.py      expiry, monthly extension, yearly clearance, tiers, reminders
  statement.py a card's points: lots and every movement, with dates
  __main__.py  `python -m core.loyalty` (the jobs' command line)
"""
