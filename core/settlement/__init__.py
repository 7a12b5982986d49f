"""Settlement: channel statements, reconciliation, the error queue, clearing,
exports and reports. Pure Python over the journal; never writes the ledger
except through core.ledger operations (the adjustments staff ask for).

  money.py        yuan strings <-> minor units, exactly; days <-> dates
  model.py        typed records: statement rows, differences, resolutions
  statements/     parsers and writers of each channel's statement format
  journal.py      a range of business days of the journal, read fast (numpy)
  reconcile.py    statement rows against the journal: the four kinds
  queue.py        imports, differences and every action on them, in LMDB
  clearing.py     what each station is owed or owes per payment method
  export.py       a day's journal as CSV or Parquet, fast
  report.py       CSV reports and PNG charts
  simulate.py     generated days: the real kernel with simulated channels
  __main__.py     `python -m core.settlement`

Used by: the command line, server/settlement_service.py, tests.
"""
