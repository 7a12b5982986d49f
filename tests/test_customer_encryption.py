"""Customers' personal fields encrypted at rest: a real server with a master
key stores no name or phone in the clear (the raw LMDB value and the whole
data file are read), with AES-256-GCM or SM4-GCM as --pii-cipher says; a
ciphertext moved to another customer or field does not open; erasure
destroys the data key (what was left, or copied before, no longer opens
with anything the store holds); customers stored by the code before this
(the old record layout, in the clear) still read, and are encrypted at
their next change; the master key may live in the HSM."""

import json
import os
import subprocess
import sys

import msgspec
import pytest

from core.admin import Admin, hsm, keys
from core.admin.access import cli_actor
from core.admin.customers import CustomerProfile, field_aad
from core.admin.errors import FailedPrecondition
from core.admin.model import Customer, FieldCipher, pack, u64_key, unpack
from core.store import open_store, rows
from tally.v1 import admin_pb2
from tests.softhsm import cli_flags, with_key_label
from tests.support import REPO, ServerProcess
from tests.test_admin_service import AdminClient, seed_directory

PERSON = admin_pb2.CustomerProfile(name="Li Na", phone="+86 139 1234 5678", email="li.na@example.cn",
                                   address="1 Renmin Road, Chengdu", birth_date="1990-05-17")
PERSONAL_VALUES = ("Li Na", "+86 139 1234 5678", "li.na@example.cn", "1 Renmin Road", "1990-05-17")
CIPHERS = {"aes": FieldCipher.AES_256_GCM, "sm4": FieldCipher.SM4_GCM}


class OldCustomer(msgspec.Struct):
    """Customer as the code before encryption at rest stored it."""

    customer_id: int
    org_id: int
    name: str = ""
    phone: str = ""
    email: str = ""
    address: str = ""
    birth_date: str = ""
    created_ms: int = 0
    updated_ms: int = 0
    erased_ms: int = 0
    erasure_reference: str = ""


def stored_value(data_dir: str, customer_id: int) -> bytes:
    """The customer's value as LMDB holds it, read beside the running server."""
    store = open_store(data_dir, 2**30, readonly=True)
    try:
        with store.env.begin() as txn:
            return bytes(txn.get(u64_key(customer_id), db=store.admin_customers))
    finally:
        store.close()


def data_file(data_dir: str) -> bytes:
    with open(os.path.join(data_dir, "data.mdb"), "rb") as file:
        return file.read()


@pytest.fixture(scope="module", params=sorted(CIPHERS))
def served(request, tmp_path_factory):
    base = tmp_path_factory.mktemp(f"pii-{request.param}")
    data_dir, master_key_file = str(base / "data"), str(base / "master.key")
    admin = seed_directory(data_dir, master_key_file, users={"root": (1, 1)})
    # A customer written by the old code: its record in the old layout, in the clear.
    with admin.store.env.begin(write=True) as txn:
        txn.put(u64_key(900), msgspec.msgpack.encode(OldCustomer(900, 12, name="Old Timer", phone="+86 10 5555 0000",
                                                                 created_ms=1, updated_ms=1)),
                db=admin.store.admin_customers)
    admin.store.close()
    process = ServerProcess(data_dir, "--master-key-file", master_key_file, "--pii-cipher", request.param,
                            demo=False).start()
    yield process, data_dir, master_key_file, CIPHERS[request.param]
    process.stop()


def test_personal_fields_are_not_stored_in_the_clear(served):
    process, data_dir, _, cipher = served
    root = AdminClient(process.channel(), "root")
    created = root.CreateCustomer(org_id=12, profile=PERSON)
    assert root.GetCustomer(customer_id=created.customer_id).profile == PERSON
    raw = stored_value(data_dir, created.customer_id)
    whole = data_file(data_dir)
    for value in PERSONAL_VALUES:
        assert value.encode() not in raw and value.encode() not in whole, value
    stored = unpack(Customer, raw)
    assert stored.field_cipher == cipher and stored.name == stored.phone == ""
    assert sorted(stored.fields_sealed) == sorted(Customer.PERSONAL_FIELDS)
    assert len(stored.data_key_sealed) == keys.NONCE_BYTES + (32 if cipher == FieldCipher.AES_256_GCM else 16) + 16
    # The export is the plaintext document.
    document = json.loads(b"".join(chunk.data for chunk in root.ExportCustomer(customer_id=created.customer_id)))
    assert (document["customer"]["name"], document["customer"]["phone"]) == (PERSON.name, PERSON.phone)
    assert "data_key_sealed" not in document["customer"] and "fields_sealed" not in document["customer"]


def test_a_customer_stored_in_the_clear_by_the_old_code_reads_and_is_encrypted_at_its_next_change(served):
    process, data_dir, _, cipher = served
    root = AdminClient(process.channel(), "root")
    old = root.GetCustomer(customer_id=900)
    assert (old.profile.name, old.profile.phone, old.org_id) == ("Old Timer", "+86 10 5555 0000", 12)
    exported = json.loads(b"".join(chunk.data for chunk in root.ExportCustomer(customer_id=900)))
    assert exported["customer"]["name"] == "Old Timer"
    root.UpdateCustomer(customer_id=900, profile=admin_pb2.CustomerProfile(name="Old Timer", phone="+86 10 5555 0001"))
    raw = stored_value(data_dir, 900)
    assert b"Old Timer" not in raw and b"5555 0001" not in raw
    assert unpack(Customer, raw).field_cipher == cipher
    assert root.GetCustomer(customer_id=900).profile.phone == "+86 10 5555 0001"


def test_erasure_destroys_the_data_key_and_nothing_left_opens(served):
    process, data_dir, master_key_file, cipher = served
    root = AdminClient(process.channel(), "root")
    customer_id = root.CreateCustomer(org_id=12, profile=PERSON).customer_id
    before = unpack(Customer, stored_value(data_dir, customer_id))
    master_key = keys.SoftwareMasterKey.from_file(master_key_file)
    erased = root.EraseCustomer(customer_id=customer_id, reason="ticket 7")
    assert erased.profile == admin_pb2.CustomerProfile() and erased.erased_ms > 0
    after = unpack(Customer, stored_value(data_dir, customer_id))
    assert after.data_key_sealed == b"" and after.fields_sealed == {} and after.name == ""
    # A ciphertext copied before the erasure opens with no data key the store still holds.
    store = open_store(data_dir, 2**30, readonly=True)
    with store.env.begin() as txn:
        held = [unpack(Customer, value) for _, value in rows(txn, store.admin_customers)]
    store.close()
    data_keys = [keys.unseal_data_key(master_key, record.customer_id, record.data_key_sealed)
                 for record in held if record.data_key_sealed]
    assert data_keys, "the other customers' keys are the candidates"
    suite = keys.AES if cipher == FieldCipher.AES_256_GCM else keys.SM4
    for data_key in data_keys:
        with pytest.raises(keys.SealError):
            keys.aead_decrypt(suite, data_key, before.fields_sealed["name"], field_aad(customer_id, "name", cipher))
    # Only the destroyed key opened it: the ciphertext was sound.
    destroyed = keys.unseal_data_key(master_key, customer_id, before.data_key_sealed)
    assert keys.aead_decrypt(suite, destroyed, before.fields_sealed["name"],
                             field_aad(customer_id, "name", cipher)) == PERSON.name.encode()


def in_process(tmp_path, master_key=None, cipher=FieldCipher.AES_256_GCM) -> Admin:
    admin = seed_directory(str(tmp_path / "data"), users={})
    admin.master_key = None if master_key is None else keys.as_master_key(master_key)
    admin.field_cipher = cipher
    return admin


def test_a_ciphertext_moved_to_another_customer_or_field_does_not_open(tmp_path):
    admin = in_process(tmp_path, os.urandom(32))
    actor = cli_actor()
    first = admin.create_customer(actor, 12, CustomerProfile(name="First", phone="111")).customer
    second = admin.create_customer(actor, 12, CustomerProfile(name="Second", phone="222")).customer
    with admin.store.env.begin(write=True) as txn:
        stored_first = unpack(Customer, txn.get(u64_key(first.customer_id), db=admin.store.admin_customers))
        stored_second = unpack(Customer, txn.get(u64_key(second.customer_id), db=admin.store.admin_customers))
        # The whole sealed state of the first customer onto the second: its key is bound to the first.
        moved = msgspec.structs.replace(stored_second, data_key_sealed=stored_first.data_key_sealed,
                                        fields_sealed=stored_first.fields_sealed)
        txn.put(u64_key(second.customer_id), pack(moved), db=admin.store.admin_customers)
        swapped = msgspec.structs.replace(stored_first, fields_sealed={
            **stored_first.fields_sealed, "name": stored_first.fields_sealed["phone"]})
        txn.put(u64_key(first.customer_id), pack(swapped), db=admin.store.admin_customers)
    for customer_id in (first.customer_id, second.customer_id):
        with pytest.raises(FailedPrecondition, match=f"customer {customer_id}: the personal fields do not open"):
            admin.get_customer(actor, customer_id)
    admin.store.close()


def test_without_the_master_key_encrypted_fields_are_refused_and_erasure_still_works(tmp_path):
    admin = in_process(tmp_path, os.urandom(32), FieldCipher.SM4_GCM)
    actor = cli_actor()
    customer_id = admin.create_customer(actor, 12, CustomerProfile(name="Wang Fang")).customer.customer_id
    admin.master_key = None
    with pytest.raises(FailedPrecondition, match="has no master key"):
        admin.get_customer(actor, customer_id)
    erased = admin.erase_customer(actor, customer_id, "ticket 9").customer
    assert erased.erased_ms and erased.name == ""
    assert admin.get_customer(actor, customer_id).customer.name == ""
    admin.store.close()


def test_the_data_keys_are_sealed_by_the_master_key_in_the_hsm(tmp_path):
    config = with_key_label("pii-master")
    made = subprocess.run([sys.executable, "-m", "core.admin", "master-key", *cli_flags(config)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    admin = in_process(tmp_path, hsm.Pkcs11MasterKey(config), FieldCipher.SM4_GCM)
    actor = cli_actor()
    customer_id = admin.create_customer(actor, 12, CustomerProfile(name="Zhao Lei", phone="+86 21 0000")).customer.customer_id
    assert admin.get_customer(actor, customer_id).customer.name == "Zhao Lei"
    with admin.store.env.begin() as txn:
        raw = bytes(txn.get(u64_key(customer_id), db=admin.store.admin_customers))
    assert b"Zhao Lei" not in raw
    # A software key (any key but the token's) does not open the data key.
    with pytest.raises(keys.SealError):
        keys.unseal_data_key(os.urandom(32), customer_id, unpack(Customer, raw).data_key_sealed)
    admin.store.close()


def test_a_server_without_a_master_key_says_personal_fields_stay_in_the_clear(server):
    assert "customers' personal fields are stored in the clear" in server.log
