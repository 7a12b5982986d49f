"""The replicated write path without a server: a leader's group commit logs
every batch and change, a follower applies the log into its own LMDB and
ends byte for byte equal; fencing and de-duplication as JetStream documents."""

import asyncio
import struct
import time

import pytest

from core.commit import GroupCommitter
from core.ledger import Ledger, load_kernel
from core.records import Op
from core.replication.changes import decode_changes, encode_changes, recording
from core.replication.errors import LogFenced, NotLeader, ReplicatedStore
from core.replication.log import LogNames, ReplicationLog
from core.replication.node import Replica, ReplicaSettings, Role
from core.results import AccountKind, OpKind, ResultCode
from core.store import DATABASE_NAMES, log_position, open_store
from core.writes import DirectWriter
from tests.nats_cluster import log_names, nats_cluster  # noqa: F401 -- fixtures

MAP_SIZE = 2**28


def topup(serial: int, card_id: int = 9) -> Op:
    return Op(kind=OpKind.TOPUP, terminal_id=1, station_id=1, serial=serial, card_id=card_id,
              account_kind=AccountKind.PERSONAL, amount=10, fingerprint=serial.to_bytes(16, "big"))


def everything(store) -> dict:
    """Every key and value of every database (the node-local meta keys aside)."""
    found = {}
    with store.env.begin() as txn:
        for name in DATABASE_NAMES:
            for key, value in txn.cursor(db=store.dbs[name]):
                if name == "meta" and key.startswith(b"log_"):
                    continue
                found[(name, key)] = value
    return found


def wait_for(condition, timeout_s: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def node(tmp_path, name: str, cluster, names: dict, kernel: str = "cython", ttl_s: float = 2.0) -> Replica:
    store = open_store(str(tmp_path / name), MAP_SIZE)
    settings = ReplicaSettings(urls=cluster.url, node_id=name, lease_ttl_s=ttl_s, **names)
    replica = Replica(settings, store)
    replica.connect()
    return replica


def test_changes_round_trip_and_compress(tmp_path):
    store = open_store(str(tmp_path / "data"), MAP_SIZE)
    with store.env.begin(write=True) as txn:
        recorder = recording(txn, store)
        recorder.put(b"a", b"1" * 10_000, db=store.meta)
        recorder.put(b"b", b"2", db=store.meta, overwrite=False)
        assert not recorder.put(b"b", b"3", db=store.meta, overwrite=False), "an existing key is not overwritten"
        recorder.delete(b"a", db=store.meta)
        assert not recorder.delete(b"missing", db=store.meta)
        with recorder.cursor(db=store.cards) as cursor:
            cursor.putmulti([(b"k1", b"v1"), (b"k2", b"v2")])
        data = recorder.payload()
        changes = recorder.changes
    assert len(data) < 1_000, "a repetitive value is compressed"
    assert decode_changes(data) == changes
    assert decode_changes(encode_changes(changes)) == changes
    assert [change[1:3] for change in changes] == [(1, b"a"), (1, b"b"), (2, b"a"), (1, b"k1"), (1, b"k2")]
    assert changes[0][3] == b"1" * 10_000


def test_the_compiled_recording_writes_the_same_bytes_as_the_python_one():
    from core.replication import changes, encoding

    items = [(b"k1", b"v1"), (bytearray(b"k2"), bytearray(b"v" * 70_000)), (memoryview(b"k3"), b""), (b"k4", b"x")]
    for record_change, record_puts in ((changes._record_change, changes._record_puts),
                                       (encoding.record_change, encoding.record_puts)):
        encoded = bytearray(b"\x01")
        record_change(encoded, 3, changes.DELETE, b"gone")
        record_change(encoded, 4, changes.PUT, bytearray(b"key"), memoryview(b"value"))
        record_puts(encoded, 5, changes.PUT, items, 3)
        with pytest.raises(ValueError):
            record_change(encoded, 1, changes.PUT, b"k" * 70_000)
        assert changes._decode_body(memoryview(encoded)[1:]) == [
            (3, changes.DELETE, b"gone", b""), (4, changes.PUT, b"key", b"value"),
            (5, changes.PUT, b"k1", b"v1"), (5, changes.PUT, b"k2", b"v" * 70_000), (5, changes.PUT, b"k3", b""),
        ]
    assert changes.record_puts is encoding.record_puts, "the recorder uses the compiled one"


@pytest.mark.parametrize("apply_changes", ["python", "compiled"])
def test_both_appliers_make_the_same_changes(tmp_path, apply_changes):
    from core.replication import changes, encoding

    apply_changes = changes._apply_body if apply_changes == "python" else encoding.apply_changes
    store = open_store(str(tmp_path / "data"), MAP_SIZE)
    handles = [store.dbs[name] for name in DATABASE_NAMES]
    with store.env.begin(write=True) as txn:
        txn.put(b"old", b"1", db=store.meta)
        txn.put(b"c0", b"0", db=store.cards)
    cards, meta = DATABASE_NAMES.index("cards"), DATABASE_NAMES.index("meta")
    body = encode_changes([(cards, changes.PUT, b"c1", b"v1"), (cards, changes.PUT, b"c2", b"v" * 5_000),
                           (meta, changes.DELETE, b"old", b""), (cards, changes.CLEAR, b"", b""),
                           (cards, changes.PUT, b"c3", b"")])
    with store.env.begin(write=True) as txn:
        apply_changes(txn, handles, changes._body_of(body))
    with store.env.begin() as txn:
        assert list(txn.cursor(db=store.cards)) == [(b"c3", b"")]
        assert txn.get(b"old", db=store.meta) is None
    for broken in (b"\x01\x02\x01\x05\x00\x00\x00\x00\x00k", b"\x01\x02\x01"):
        with pytest.raises((ValueError, struct.error)), store.env.begin(write=True) as txn:
            apply_changes(txn, handles, changes._body_of(broken))


def test_a_follower_ends_equal_to_the_leader(tmp_path, nats_cluster, log_names):
    leader = node(tmp_path, "a", nats_cluster, log_names)
    follower = node(tmp_path, "b", nats_cluster, log_names)
    leader.start("127.0.0.1:1")
    wait_for(lambda: leader.role is Role.LEADER, what="the first node to lead")
    follower.start("127.0.0.1:2")
    ledger = Ledger(leader.store, load_kernel("cython"))

    async def drive():
        committer = GroupCommitter(ledger, log=leader)
        committer.start()
        await committer.submit(Op(kind=OpKind.OPEN_CARD, card_id=9, card_status=2))
        results = await asyncio.gather(*(committer.submit(topup(serial)) for serial in range(1, 1_001)))
        await committer.write(lambda txn: txn.put(b"note", b"from the back office", db=leader.store.meta))
        committer.stop()
        return results

    results = asyncio.run(drive())
    assert {result.code for result in results} == {ResultCode.APPROVED}
    wait_for(lambda: follower.position == leader.position, what="the follower to catch up")
    assert everything(follower.store) == everything(leader.store)
    assert log_position(follower.store)[0] == leader.position
    assert follower.status().leader_node == "a"
    with pytest.raises(NotLeader) as refused:
        follower.check_writable()
    assert refused.value.metadata["leader"] == "127.0.0.1:1"
    with pytest.raises(ReplicatedStore):
        DirectWriter(follower.store).write_blocking(lambda txn: None)
    with pytest.raises(ReplicatedStore):
        Ledger(follower.store, load_kernel("reference")).apply([topup(5000)], 0, 0)
    follower.stop()
    leader.stop()


def test_a_stale_expected_sequence_is_refused_and_a_retry_is_stored_once(nats_cluster, log_names):
    log = ReplicationLog(nats_cluster.url, LogNames(log_names["stream"], log_names["subject"]))
    log.connect()
    first = log.append(b"one", 0, "id-1", "changes", "x")
    assert log.append(b"one", 0, "id-1", "changes", "x") == first, "the same Nats-Msg-Id is stored once"
    second = log.append(b"two", first, "id-2", "changes", "x")
    with pytest.raises(LogFenced):
        log.append(b"late", first, "id-3", "changes", "y")
    entries = log.read(1)
    assert [(entry.sequence, entry.data) for entry in entries] == [(first, b"one"), (second, b"two")]
    assert entries[0].pending == 1 and entries[1].pending == 0
    assert log.read(second + 1) == []
    log.close()


def test_a_node_with_other_books_does_not_apply_the_log(tmp_path, nats_cluster, log_names):
    leader = node(tmp_path, "a", nats_cluster, log_names)
    leader.start("127.0.0.1:1")
    wait_for(lambda: leader.role is Role.LEADER, what="the first node to lead")
    stranger_store = open_store(str(tmp_path / "stranger"), MAP_SIZE)
    ledger = Ledger(stranger_store, load_kernel("reference"))
    ledger.apply([Op(kind=OpKind.OPEN_CARD, card_id=77, card_status=2)], 0, 0)  # books of its own
    stranger_store.close()
    stranger = node(tmp_path, "stranger", nats_cluster, log_names)
    stranger.start("127.0.0.1:3")
    wait_for(lambda: stranger.refused != "", what="the stranger to refuse the log")
    assert "not what the log started from" in stranger.refused
    assert stranger.position == 0 and stranger.role is Role.FOLLOWER
    stranger.stop()
    leader.stop()


def test_a_node_that_leads_again_trusts_no_record_kept_from_before(tmp_path, nats_cluster, log_names):
    """Node a's Cython kernel keeps the records of its batches (Kernel
    .records_for); b then drains the card through the log, and a, leading
    again with the same kernel, must see b's balance, not its own memory."""
    kernel_a = load_kernel("cython")
    store_a = open_store(str(tmp_path / "a"), MAP_SIZE)
    store_b = open_store(str(tmp_path / "b"), MAP_SIZE)

    def lead(store, name, kernel, ops):
        replica = Replica(ReplicaSettings(urls=nats_cluster.url, node_id=name, lease_ttl_s=2.0, **log_names), store)
        replica.connect()
        replica.start(f"127.0.0.1:{name}")
        wait_for(lambda: replica.role is Role.LEADER, what=f"{name} to lead")

        async def drive():
            committer = GroupCommitter(Ledger(store, kernel), log=replica)
            committer.start()
            results = [await committer.submit(op) for op in ops]
            committer.stop()
            return results

        results = asyncio.run(drive())
        replica.stop()  # releases the lease: the other takes it at once
        return results

    opened = lead(store_a, "a", kernel_a, [Op(kind=OpKind.OPEN_CARD, card_id=9, card_status=2), topup(1)])
    assert [result.code for result in opened] == [ResultCode.APPROVED] * 2
    drain = Op(kind=OpKind.PAY, terminal_id=2, station_id=1, serial=1, card_id=9, amount=10, plan_flags=2,
               fingerprint=b"d" * 16)
    assert lead(store_b, "b", load_kernel("reference"), [drain])[0].code == ResultCode.APPROVED
    again = Op(kind=OpKind.PAY, terminal_id=2, station_id=1, serial=2, card_id=9, amount=10, plan_flags=2,
               fingerprint=b"e" * 16)
    assert lead(store_a, "a", kernel_a, [again])[0].code == ResultCode.INSUFFICIENT_FUNDS
    follower = Replica(ReplicaSettings(urls=nats_cluster.url, node_id="b", lease_ttl_s=2.0, **log_names), store_b)
    follower.connect()
    follower.start("127.0.0.1:b")
    wait_for(lambda: follower.position >= log_position(store_a)[0], what="b to catch up")
    follower.stop()
    assert everything(store_a) == everything(store_b)


def test_a_pipelined_append_after_a_foreign_entry_is_refused(nats_cluster, log_names):
    """An append started while the one before it is unacknowledged names
    that one's msg id: if the one before was refused and another writer's
    entry took its place, the sequence alone would match, the msg id does not."""
    log = ReplicationLog(nats_cluster.url, LogNames(log_names["stream"], log_names["subject"]))
    log.connect()
    assert log.append(b"one", 0, "id-1", "changes", "x") == 1
    first = log.append_started(lambda: b"two", 1, "id-2", "changes", "x", previous_msg_id="id-1")
    second = log.append_started(lambda: b"three", 2, "id-3", "changes", "x", previous_msg_id="id-2")
    assert first.result(5) == (2, b"two") and second.result(5) == (3, b"three"), "both in flight, both stored"
    with pytest.raises(LogFenced):
        log.append(b"mine", 2, "id-4", "changes", "x")  # refused: another writer is past 2
    assert log.append(b"foreign", 3, "id-f", "changes", "y") == 4
    with pytest.raises(LogFenced):
        log.append_started(lambda: b"after mine", 4, "id-5", "changes", "x", previous_msg_id="id-4").result(5)
    assert [entry.data for entry in log.read(1)] == [b"one", b"two", b"three", b"foreign"]
    log.close()


def test_pipelined_batches_end_as_on_a_single_node(tmp_path, nats_cluster, log_names):
    """Small batches, so that the leader pipelines them (several batches in
    one transaction, the kernel keeping its records from one to the next):
    the leader's and the follower's books equal a single node's that ran
    the same operations at the same clock."""
    leader = node(tmp_path, "a", nats_cluster, log_names)
    follower = node(tmp_path, "b", nats_cluster, log_names)
    leader.start("127.0.0.1:1")
    wait_for(lambda: leader.role is Role.LEADER, what="the first node to lead")
    follower.start("127.0.0.1:2")
    single = open_store(str(tmp_path / "single"), MAP_SIZE)
    pays = [Op(kind=OpKind.PAY, terminal_id=2, station_id=1, serial=serial, card_id=9, amount=7, plan_flags=2,
               fingerprint=serial.to_bytes(16, "big")) for serial in range(1, 1_601)]

    class Counting:
        """The kernel, counting the batches that ran in their
        predecessor's transaction."""

        def __init__(self):
            self.kernel, self.continued = load_kernel("cython"), 0

        def __getattr__(self, name):
            return getattr(self.kernel, name)

        def batch_continues(self, txn_id):
            self.continued += 1
            self.kernel.batch_continues(txn_id)

    kernel = Counting()

    async def drive(store, replica):
        committer = GroupCommitter(Ledger(store, kernel), log=replica, batch_size_max=40,
                                   clock=lambda: 1_700_000_000_000)
        committer.start()
        await committer.submit(Op(kind=OpKind.OPEN_CARD, card_id=9, card_status=2))
        results = await asyncio.gather(*(committer.submit(topup(serial)) for serial in range(1, 1_001)))
        results += await asyncio.gather(*(committer.submit(pay) for pay in pays))
        committer.stop()
        return [result.code for result in results]

    codes = asyncio.run(drive(leader.store, leader))
    assert codes == asyncio.run(drive(single, None))
    assert codes.count(ResultCode.APPROVED) == 1_000 + 10_000 // 7, "the card drained exactly, not past zero"
    assert leader.position == 2 + (1_000 + 1_600) // 40, "one log entry per batch (and the LEADER and OPEN_CARD ones)"
    assert kernel.continued > 10, "batches were pipelined"
    wait_for(lambda: follower.position == leader.position, what="the follower to catch up")
    assert everything(follower.store) == everything(leader.store) == everything(single)
    follower.stop()
    leader.stop()
