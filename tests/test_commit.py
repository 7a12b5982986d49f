"""Group commit: bounded queue, batching, one failure fails alone."""

import asyncio

import pytest

from core.commit import GroupCommitter, KernelFailure, QueueFull, ShuttingDown
from core.records import Op
from core.results import AccountKind, OpKind, ResultCode


def topup(serial: int) -> Op:
    return Op(kind=OpKind.TOPUP, terminal_id=1, station_id=1, serial=serial, card_id=9, account_kind=AccountKind.PERSONAL, amount=10, fingerprint=serial.to_bytes(16, "big"))


def test_requests_share_commits_and_each_gets_its_own_result(cython_ledger):
    batches = []

    async def scenario():
        committer = GroupCommitter(cython_ledger, on_batch=lambda size, seconds: batches.append(size))
        committer.start()
        await committer.submit(Op(kind=OpKind.OPEN_CARD, card_id=9, card_status=2))
        results = await asyncio.gather(*(committer.submit(topup(serial)) for serial in range(1, 2_001)))
        committer.stop()
        return results

    results = asyncio.run(scenario())
    assert [r.code for r in results] == [ResultCode.APPROVED] * 2_000
    assert len({r.txn_id for r in results}) == 2_000
    assert sum(batches) == 2_001
    assert len(batches) < 100, "2,000 concurrent requests should need far fewer commits"
    assert cython_ledger.account(AccountKind.PERSONAL, 9).balance == 20_000


def test_a_full_queue_refuses_at_once(cython_ledger):
    async def scenario():
        committer = GroupCommitter(cython_ledger, queue_length_max=3)
        committer._loop = asyncio.get_running_loop()  # queue without a writer yet
        waiting = [committer.submit(topup(serial)) for serial in range(1, 4)]
        with pytest.raises(QueueFull):
            committer.submit(topup(4))
        # The second half of an admitted request is never refused.
        waiting.append(committer.submit(Op(kind=OpKind.OPEN_CARD, card_id=9, card_status=2), bypass_limit=True))
        committer.start()
        results = await asyncio.gather(*waiting)
        committer.stop()
        with pytest.raises(ShuttingDown):
            committer.submit(topup(5))
        return results

    results = asyncio.run(scenario())
    assert [r.code for r in results] == [ResultCode.CARD_NOT_FOUND] * 3 + [ResultCode.APPROVED]


def test_an_operation_the_kernel_raises_on_fails_alone(cython_ledger):
    async def scenario():
        committer = GroupCommitter(cython_ledger)
        committer._loop = asyncio.get_running_loop()
        good = committer.submit(Op(kind=OpKind.OPEN_CARD, card_id=9, card_status=2))
        bad = committer.submit(Op(kind=99))
        also_good = committer.submit(Op(kind=OpKind.OPEN_CARD, card_id=10, card_status=2))
        committer.start()
        outcomes = await asyncio.gather(good, bad, also_good, return_exceptions=True)
        committer.stop()
        return outcomes

    good, bad, also_good = asyncio.run(scenario())
    assert isinstance(bad, KernelFailure)
    assert good.code == also_good.code == ResultCode.APPROVED
    assert cython_ledger.card(9) is not None and cython_ledger.card(10) is not None


def test_concurrent_chains_never_pass_a_counters_ceiling(cython_ledger):
    """500 sales race for a promotion with stock 37, in small batches so
    that chains sit next to each other in many commits: exactly 37 take it,
    and each chain comes back whole, in order."""
    from core.counters import CounterScope, CounterTake
    from server.counter_client import CounterClient

    stock = CounterTake(CounterScope.PROMOTION_STOCK, 5, ceiling=37, rule="goods promotion 5")

    async def scenario():
        committer = GroupCommitter(cython_ledger, batch_size_max=64)
        committer.start()
        await committer.submit(Op(kind=OpKind.OPEN_CARD, card_id=9, card_status=2))
        client = CounterClient(committer, cython_ledger)
        outcomes = await asyncio.gather(*(client.take([stock], topup(serial)) for serial in range(1, 501)))
        committer.stop()
        return outcomes, client.read([stock])

    outcomes, (value,) = asyncio.run(scenario())
    approved = [o for o in outcomes if o.code == ResultCode.APPROVED]
    refused = [o for o in outcomes if o.code == ResultCode.COUNTER_LIMIT_REACHED]
    assert (len(approved), len(refused), value) == (37, 463, 37)
    assert sorted(o.values[0] for o in approved) == list(range(1, 38))
    assert {o.refused_by for o in refused} == {"goods promotion 5"}
    assert all(o.main.code == ResultCode.LINKED_FAILED for o in refused)
    assert cython_ledger.account(AccountKind.PERSONAL, 9).balance == 37 * 10


def test_changes_share_a_commit_with_operations_and_one_that_raises_is_undone_alone(cython_ledger):
    """A single node commits back-office changes with the operations waiting
    beside them (one fsync), each change nested: one that raises leaves
    nothing of itself and takes nothing of the others with it."""
    store = cython_ledger.store
    commits = []

    def put(key: bytes, fail: bool = False):
        def change(txn):
            txn.put(key, b"written", db=store.meta)
            if fail:
                raise ValueError("refused after writing")
            return key
        return change

    async def scenario():
        committer = GroupCommitter(cython_ledger, on_batch=lambda size, seconds: commits.append(size))
        committer.start()
        await committer.submit(Op(kind=OpKind.OPEN_CARD, card_id=9, card_status=2))
        committer._loop = asyncio.get_running_loop()
        waiting = [committer.submit(topup(serial)) for serial in range(1, 6)]
        waiting += [committer.write(put(b"test-a")), committer.write(put(b"test-b", fail=True)), committer.write(put(b"test-c"))]
        waiting += [committer.submit(topup(serial)) for serial in range(6, 11)]
        outcomes = await asyncio.gather(*waiting, return_exceptions=True)
        committer.stop()
        return outcomes

    outcomes = asyncio.run(scenario())
    assert [o.code for o in outcomes[:5] + outcomes[8:]] == [ResultCode.APPROVED] * 10
    assert outcomes[5:8] == [b"test-a", outcomes[6], b"test-c"] and isinstance(outcomes[6], ValueError)
    with store.env.begin() as txn:
        assert [txn.get(key, db=store.meta) for key in (b"test-a", b"test-b", b"test-c")] == [b"written", None, b"written"]
    assert commits[1:] == [10], "the ten top-ups and three changes went in one commit"
    assert cython_ledger.account(AccountKind.PERSONAL, 9).balance == 100


def test_payments_flowing_says_whether_the_writer_took_operations_lately(cython_ledger):
    """What the password hashes yield to (server/admin_service.py HashGate):
    true after operations commit, not after a back-office change alone."""
    async def scenario():
        committer = GroupCommitter(cython_ledger)
        committer.start()
        before = committer.payments_flowing()
        await committer.write(lambda txn: None)
        after_change = committer.payments_flowing()
        await committer.submit(Op(kind=OpKind.OPEN_CARD, card_id=9, card_status=2))
        after_operation = committer.payments_flowing()
        committer.stop()
        return before, after_change, after_operation

    assert asyncio.run(scenario()) == (False, False, True)
