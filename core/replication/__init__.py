"""Replication: a Tally node's writes go through a replicated log.

One leader takes writes; each write transaction's key/value changes are
appended to a NATS JetStream stream (3 replicas, one writer fenced by
Nats-Expected-Last-Sequence) and acknowledged by a quorum before the
transaction commits and anyone is answered; followers apply the stream in
order into their own LMDB and serve reads; a lease in a JetStream
key-value bucket decides who leads. Off by default: a server without
--replicate is the embedded single node it always was.

Modules, one idea each:
  changes.py        recording a write transaction's changes; their encoding; applying them
  log.py            the stream: append (fenced, de-duplicated), read in order, trim
  lease.py          the leader's lease in a key-value bucket
  applier.py        log entries into a store, with the position in the same transaction
  node.py           one node: follower, leader, and the moves between them
  events.py         committed transactions as typed tally.v1 events for other systems
  errors.py         why a replicated node refuses
  local_cluster.py  a NATS cluster on loopback (tests, benchmarks, trying it on one machine)
"""
