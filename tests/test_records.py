"""The record layouts: one definition that the kernel, the reference and the
proto contract agree on."""

from core import kernel, records
from core.records import Idem, Op, Result, Txn, decode, encode
from core.results import OpKind, ResultCode
from tally.v1 import common_pb2, payment_pb2


def test_the_kernels_c_structs_have_the_python_layouts_sizes():
    assert kernel.record_sizes() == records.RECORD_SIZES


def test_records_round_trip_through_their_bytes():
    op = Op(kind=OpKind.PAY, serial=2**64 - 1, amount=-5, fingerprint=bytes(range(16)))
    assert decode(Op, encode(op)) == op
    entry = Idem(b"f" * 16, Result(code=ResultCode.APPROVED, txn_id=7, points_balance=-1))
    assert decode(Idem, encode(entry)) == entry
    txn = Txn(txn_id=1, refunds_posted=3, points_shortfall=2)
    assert decode(Txn, encode(txn)) == txn


def test_result_codes_are_the_protos_result_codes():
    proto = {value.name: value.number for value in common_pb2.ResultCode.DESCRIPTOR.values}
    ours = {("RESULT_CODE_UNSPECIFIED" if code.name == "UNSPECIFIED" else code.name): code.value for code in ResultCode}
    assert proto == ours


def test_transaction_kinds_and_states_match_the_proto():
    kinds = {value.number for value in payment_pb2.TransactionKind.DESCRIPTOR.values if value.number}
    assert kinds == {OpKind.TOPUP, OpKind.PAY, OpKind.PREAUTH, OpKind.REFUND}
    states = {value.name: value.number for value in payment_pb2.TransactionState.DESCRIPTOR.values if value.number}
    from core.results import TxnState

    assert states == {state.name: state.value for state in TxnState}
