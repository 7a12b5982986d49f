"""The tally.v1 contract stays compatible with its last release.

proto/baseline/tally-v1.binpb is the contract as last released (a
FileDescriptorSet: `make proto-baseline` writes it, at a release only).
The current protos must keep everything in it: every message, field
(same number, name, type, label, oneof), enum value and RPC (same request
and response types, same streaming). Adding is fine. A test below breaks a
copy of the baseline in each of those ways and checks that the checker
names it, so the check cannot pass by accident.

Also: every *_ms field has one type (uint64), the answers and records that
leave Tally carry a currency, and `buf lint` passes with the rules in
buf.yaml (skipped, saying why, without node/npm).
"""

import os
import shutil
import subprocess
import sys

import pytest
from google.protobuf import descriptor_pb2

from tests.support import REPO

BASELINE = os.path.join(REPO, "proto", "baseline", "tally-v1.binpb")
PROTO_DIR = os.path.join(REPO, "proto", "tally", "v1")
BUF = os.path.join(REPO, "node_modules", ".bin", "buf")
FieldType = descriptor_pb2.FieldDescriptorProto


def compile_current(out_dir) -> descriptor_pb2.FileDescriptorSet:
    """The current protos, compiled by protoc as `make proto-baseline` does."""
    out = os.path.join(out_dir, "current.binpb")
    names = sorted(f"tally/v1/{name}" for name in os.listdir(PROTO_DIR) if name.endswith(".proto"))
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-Iproto", f"--descriptor_set_out={out}", *names],
                   cwd=REPO, check=True)
    with open(out, "rb") as file:
        return descriptor_pb2.FileDescriptorSet.FromString(file.read())


def load_baseline() -> descriptor_pb2.FileDescriptorSet:
    with open(BASELINE, "rb") as file:
        return descriptor_pb2.FileDescriptorSet.FromString(file.read())


# ------------------------------------------------------------ the checker


def _messages(files):
    """Full name -> DescriptorProto, nested messages included."""
    found = {}

    def walk(prefix, message):
        name = f"{prefix}.{message.name}"
        found[name] = message
        for nested in message.nested_type:
            walk(name, nested)

    for file in files.file:
        for message in file.message_type:
            walk(file.package, message)
    return found


def _enums(files):
    found = {}
    for file in files.file:
        for enum in file.enum_type:
            found[f"{file.package}.{enum.name}"] = enum
    for name, message in _messages(files).items():
        for enum in message.enum_type:
            found[f"{name}.{enum.name}"] = enum
    return found


def _services(files):
    return {f"{file.package}.{service.name}": service for file in files.file for service in file.service}


def _field_shape(message, field) -> tuple:
    oneof = message.oneof_decl[field.oneof_index].name if field.HasField("oneof_index") else ""
    return FieldType.Type.Name(field.type), field.type_name, FieldType.Label.Name(field.label), oneof


def _message_changes(name, old, new) -> list[str]:
    changes = []
    new_by_number = {field.number: field for field in new.field}
    new_by_name = {field.name: field for field in new.field}
    for field in old.field:
        current = new_by_number.get(field.number)
        if current is None:
            moved = new_by_name.get(field.name)
            changes.append(f"{name}.{field.name} = {field.number}: renumbered to {moved.number}" if moved
                           else f"{name}.{field.name} = {field.number}: removed")
            continue
        if current.name != field.name:
            changes.append(f"{name}.{field.name} = {field.number}: renamed to {current.name} (breaks JSON and code)")
        before, after = _field_shape(old, field), _field_shape(new, current)
        if before[:2] != after[:2]:
            was, now = " ".join(filter(None, before[:2])), " ".join(filter(None, after[:2]))
            changes.append(f"{name}.{field.name}: type {was} became {now}")
        if before[2] != after[2]:
            changes.append(f"{name}.{field.name}: label {before[2]} became {after[2]}")
        if before[3] != after[3]:
            changes.append(f"{name}.{field.name}: oneof {before[3]!r} became {after[3]!r}")
    return changes


def breaking_changes(baseline, current) -> list[str]:
    """What the current contract breaks of the baseline, one line each."""
    changes = []
    old_messages, new_messages = _messages(baseline), _messages(current)
    for name, message in old_messages.items():
        if name not in new_messages:
            changes.append(f"message {name}: removed")
        else:
            changes.extend(_message_changes(name, message, new_messages[name]))
    old_enums, new_enums = _enums(baseline), _enums(current)
    for name, enum in old_enums.items():
        if name not in new_enums:
            changes.append(f"enum {name}: removed")
            continue
        values = {value.number: value.name for value in new_enums[name].value}
        for value in enum.value:
            if value.number not in values:
                changes.append(f"enum {name}.{value.name} = {value.number}: removed")
            elif values[value.number] != value.name:
                changes.append(f"enum {name}.{value.name} = {value.number}: renamed to {values[value.number]}")
    old_services, new_services = _services(baseline), _services(current)
    for name, service in old_services.items():
        if name not in new_services:
            changes.append(f"service {name}: removed")
            continue
        methods = {method.name: method for method in new_services[name].method}
        for method in service.method:
            now = methods.get(method.name)
            if now is None:
                changes.append(f"rpc {name}.{method.name}: removed")
                continue
            for part in ("input_type", "output_type", "client_streaming", "server_streaming"):
                if getattr(method, part) != getattr(now, part):
                    was, became = getattr(method, part), getattr(now, part)
                    changes.append(f"rpc {name}.{method.name}: {part} {was} became {became}")
    return changes


# ------------------------------------------------------------ the tests


def test_the_contract_keeps_everything_of_the_last_release(tmp_path):
    changes = breaking_changes(load_baseline(), compile_current(tmp_path))
    assert not changes, ("breaking changes against proto/baseline/tally-v1.binpb (the last release):\n  "
                         + "\n  ".join(changes))


def _message(files, full_name):
    return _messages(files)[full_name]


def _break(mutate) -> list[str]:
    baseline = load_baseline()
    current = descriptor_pb2.FileDescriptorSet()
    current.CopyFrom(baseline)
    mutate(current)
    return breaking_changes(baseline, current)


def _field(files, message, name):
    return next(field for field in _message(files, message).field if field.name == name)


def test_the_checker_names_every_kind_of_breaking_change():
    def remove_field(files):
        message = _message(files, "tally.v1.PayRequest")
        message.field.remove(_field(files, "tally.v1.PayRequest", "amount_minor"))

    def renumber(files):
        _field(files, "tally.v1.PayRequest", "amount_minor").number = 99

    def retype(files):
        _field(files, "tally.v1.PaymentAnswer", "txn_id").type = FieldType.TYPE_INT64

    def relabel(files):
        _field(files, "tally.v1.PaymentAnswer", "txn_id").label = FieldType.LABEL_REPEATED

    def remove_enum_value(files):
        enum = _enums(files)["tally.v1.ResultCode"]
        enum.value.remove(next(value for value in enum.value if value.name == "CARD_LOST"))

    def remove_rpc(files):
        service = _services(files)["tally.v1.PaymentService"]
        service.method.remove(next(method for method in service.method if method.name == "Void"))

    def change_request(files):
        service = _services(files)["tally.v1.PaymentService"]
        next(method for method in service.method if method.name == "Void").input_type = ".tally.v1.RefundRequest"

    expected = {
        remove_field: "tally.v1.PayRequest.amount_minor = 2: removed",
        renumber: "tally.v1.PayRequest.amount_minor = 2: renumbered to 99",
        retype: "tally.v1.PaymentAnswer.txn_id: type TYPE_UINT64 became TYPE_INT64",
        relabel: "tally.v1.PaymentAnswer.txn_id: label LABEL_OPTIONAL became LABEL_REPEATED",
        remove_enum_value: "enum tally.v1.ResultCode.CARD_LOST = 7: removed",
        remove_rpc: "rpc tally.v1.PaymentService.Void: removed",
        change_request:
            "rpc tally.v1.PaymentService.Void: input_type .tally.v1.VoidRequest became .tally.v1.RefundRequest",
    }
    for mutate, line in expected.items():
        assert _break(mutate) == [line], mutate.__name__


def test_adding_fields_values_and_rpcs_is_not_breaking():
    def add(files):
        message = _message(files, "tally.v1.PayRequest")
        message.field.add(name="tip_minor", number=1000, type=FieldType.TYPE_INT64, label=FieldType.LABEL_OPTIONAL)
        _enums(files)["tally.v1.ResultCode"].value.add(name="SOMETHING_NEW", number=1000)
        _services(files)["tally.v1.PaymentService"].method.add(name="Tip", input_type=".tally.v1.PayRequest",
                                                              output_type=".tally.v1.PaymentAnswer")

    assert _break(add) == []


def test_every_ms_field_is_uint64(tmp_path):
    current = compile_current(tmp_path)
    types = {f"{name}.{field.name}": FieldType.Type.Name(field.type)
             for name, message in _messages(current).items() for field in message.field if field.name.endswith("_ms")}
    assert len(types) > 30
    assert {name: kind for name, kind in types.items() if kind != "TYPE_UINT64"} == {}


def test_amounts_that_leave_tally_carry_their_currency(tmp_path):
    messages = _messages(compile_current(tmp_path))
    for name in ("tally.v1.PaymentAnswer", "tally.v1.Transaction", "tally.v1.ClearingAnswer",
                 "tally.v1.ShiftCloseAnswer", "tally.v1.DayEndAnswer"):
        currency = [field for field in messages[name].field if field.name == "currency"]
        assert currency and currency[0].type == FieldType.TYPE_STRING, name


def _buf_or_skip() -> str:
    if shutil.which("node") is None or shutil.which("npm") is None:
        print("buf lint skipped: node/npm not installed (the @bufbuild/buf npm package ships buf)")
        pytest.skip("node/npm not installed")
    assert os.path.exists(BUF), "node_modules/.bin/buf missing: `make test` installs it (npm ci)"
    return BUF


def test_buf_lint_passes():
    buf = _buf_or_skip()
    result = subprocess.run([buf, "lint"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_breaking_agrees_with_the_checker():
    """A second opinion: buf's own wire and source checks against the same baseline."""
    buf = _buf_or_skip()
    result = subprocess.run([buf, "breaking", "proto", "--against", BASELINE], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
