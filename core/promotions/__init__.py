"""Promotions: goods promotions, discounts, coupons, red packets, lotteries.

Everything here is pure Python and decides; the kernel (core/kernel.pyx)
counts. Pricing runs from an in-memory snapshot of the running promotions
and returns, beside the discounts, the counter takes (core/counters.py) that
must not oversell: stock, budget, uses per customer, a coupon's single use.
The server links those takes to the sale, so the kernel applies them in the
sale's own write transaction, all or nothing.

  model.py       the typed promotion (msgspec), its kinds, terms and life cycle
  validation.py  refusing inconsistent promotions when saved, naming the field
  store.py       promotions, coupons, packets and draws in LMDB; the snapshot
  pricing.py     a basket's discounts under the documented stacking policy
  coupons.py     unguessable codes, issuing, the counters of issue and use
  packets.py     red packets: the split into shares, the claim condition
  lottery.py     the draw plan, chances, a secure draw, the prize's stock
"""
