"""No RPC ever answers UNKNOWN or INTERNAL, whatever it is sent.

Hypothesis builds requests from the proto descriptors themselves (every
field of every request message of every tally.v1 RPC, with values at and
past every type's bounds, nested messages, repeated fields) and random
bytes, and sends them to a real server on 127.0.0.1: once open (the demo:
handlers run on whatever arrives) and once with a staff token (AdminService
runs too). Malformed input must be INVALID_ARGUMENT naming a field, a
refusal of its own kind, or an answer: never UNKNOWN (an exception gRPC
caught) nor INTERNAL (one the server caught: a bug).
"""

import importlib
import os
import pathlib

import grpc
import pytest
from google.protobuf import descriptor as D
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import ServerProcess
from tests.test_admin_service import AdminClient, seed_directory

PROTO_DIR = pathlib.Path(__file__).resolve().parent.parent / "proto" / "tally" / "v1"
NEVER = (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)
DEPTH_MAX = 3
# `make test` runs the same examples each time (derandomized, so that a
# failure is not a flake); TALLY_FUZZ_EXAMPLES=N TALLY_FUZZ_SEED=random searches further.
EXAMPLES_PER_RPC = int(os.environ.get("TALLY_FUZZ_EXAMPLES", "12"))
DERANDOMIZE = os.environ.get("TALLY_FUZZ_SEED", "fixed") != "random"
INT_BOUNDS = {
    D.FieldDescriptor.TYPE_INT32: (-2**31, 2**31 - 1), D.FieldDescriptor.TYPE_SINT32: (-2**31, 2**31 - 1),
    D.FieldDescriptor.TYPE_SFIXED32: (-2**31, 2**31 - 1), D.FieldDescriptor.TYPE_INT64: (-2**63, 2**63 - 1),
    D.FieldDescriptor.TYPE_SINT64: (-2**63, 2**63 - 1), D.FieldDescriptor.TYPE_SFIXED64: (-2**63, 2**63 - 1),
    D.FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1), D.FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    D.FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1), D.FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def methods() -> list:
    found = []
    for proto in sorted(PROTO_DIR.glob("*.proto")):
        module = importlib.import_module(f"tally.v1.{proto.stem}_pb2")
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                found.append(method)
    return found


def scalar(field) -> st.SearchStrategy:
    if field.type in INT_BOUNDS:
        low, high = INT_BOUNDS[field.type]
        return st.one_of(st.sampled_from((0, 1, -1 if low < 0 else 2, low, high)), st.integers(low, high),
                         st.integers(0, min(high, 10**13)))
    if field.type == D.FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if field.type == D.FieldDescriptor.TYPE_STRING:
        return st.one_of(st.text(max_size=24), st.text(min_size=200, max_size=400), st.sampled_from(("", "fuel", "92")))
    if field.type == D.FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if field.type == D.FieldDescriptor.TYPE_ENUM:
        numbers = [value.number for value in field.enum_type.values]
        return st.one_of(st.sampled_from(numbers), st.integers(-5, 200))
    if field.type in (D.FieldDescriptor.TYPE_DOUBLE, D.FieldDescriptor.TYPE_FLOAT):
        return st.floats(allow_nan=False, width=32)
    raise AssertionError(f"no strategy for field type {field.type}")


def message_of(descriptor, depth: int = 0) -> st.SearchStrategy:
    """Dicts of field values, turned into the message by `build`."""
    fields = {}
    for field in descriptor.fields:
        if field.type == D.FieldDescriptor.TYPE_MESSAGE:
            if depth >= DEPTH_MAX:
                continue
            if field.message_type.GetOptions().map_entry:
                key, value = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
                if value.type == D.FieldDescriptor.TYPE_MESSAGE:
                    value_strategy = message_of(value.message_type, depth + 1)
                else:
                    value_strategy = scalar(value)
                fields[field.name] = st.dictionaries(scalar(key), value_strategy, max_size=3)
                continue
            inner = message_of(field.message_type, depth + 1)
        else:
            inner = scalar(field)
        is_repeated = field.is_repeated
        fields[field.name] = st.lists(inner, max_size=4) if is_repeated else inner
    return st.fixed_dictionaries({}, optional=fields)


def build(message_type, values: dict):
    message = message_type()
    for name, value in values.items():
        field = message.DESCRIPTOR.fields_by_name[name]
        if field.type == D.FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
            target = getattr(message, name)
            for key, item in value.items():
                if isinstance(item, dict):
                    target[key].CopyFrom(build(type(target[key]), item))
                else:
                    target[key] = item
        elif field.is_repeated:
            target = getattr(message, name)
            if field.type == D.FieldDescriptor.TYPE_MESSAGE:
                for item in value:
                    target.add().CopyFrom(build(_class_of(field.message_type), item))
            else:
                target.extend(value)
        elif field.type == D.FieldDescriptor.TYPE_MESSAGE:
            getattr(message, name).CopyFrom(build(_class_of(field.message_type), value))
        else:
            setattr(message, name, value)
    return message


def _class_of(descriptor):
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(descriptor)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzz")
    data_dir = str(base / "data")
    seed_directory(data_dir, str(base / "master.key")).store.close()
    process = ServerProcess(data_dir, "--master-key-file", str(base / "master.key")).start()
    yield process, (("authorization", f"Bearer {AdminClient(process.channel(), 'root').token}"),)
    process.kill()


def call(channel, method, body_or_bodies, metadata):
    """Send raw request bytes (a list of them for a client stream); the
    status code, OK included."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    try:
        if method.client_streaming and method.server_streaming:
            list(channel.stream_stream(path, request_serializer=None, response_deserializer=None)(
                iter(body_or_bodies), metadata=metadata, timeout=20))
        elif method.client_streaming:
            channel.stream_unary(path, request_serializer=None, response_deserializer=None)(
                iter(body_or_bodies), metadata=metadata, timeout=20)
        elif method.server_streaming:
            list(channel.unary_stream(path, request_serializer=None, response_deserializer=None)(
                body_or_bodies, metadata=metadata, timeout=20))
        else:
            channel.unary_unary(path, request_serializer=None, response_deserializer=None)(
                body_or_bodies, metadata=metadata, timeout=20)
    except grpc.RpcError as error:
        return error.code(), error.details()
    return grpc.StatusCode.OK, ""


@pytest.mark.parametrize("method", methods(), ids=lambda method: f"{method.containing_service.name}.{method.name}")
def test_no_request_makes_an_rpc_answer_unknown_or_internal(server, method):
    process, token = server
    channel = process.channel()
    message_type = _class_of(method.input_type)
    requests = st.lists(message_of(method.input_type), min_size=1, max_size=3) if method.client_streaming else message_of(method.input_type)

    @settings(max_examples=EXAMPLES_PER_RPC, deadline=None, suppress_health_check=list(HealthCheck), derandomize=DERANDOMIZE)
    @given(values=requests, raw=st.binary(max_size=120), with_token=st.booleans())
    def fuzz(values, raw, with_token):
        metadata = token if with_token else ()
        if method.client_streaming:
            body = [build(message_type, item).SerializeToString() for item in values]
            garbage = [raw]
        else:
            body = build(message_type, values).SerializeToString()
            garbage = raw
        for sent in (body, garbage):
            code, details = call(channel, method, sent, metadata)
            assert code not in NEVER, f"{method.full_name}: {code.name}: {details}\n{process.log[-3000:]}"

    fuzz()
    assert process.process.poll() is None, "the server kept serving"
