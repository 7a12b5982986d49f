"""Master key rotation: everything sealed under the old master key, sealed
again under the new one, in one write transaction.

Owns: the list of what the master key seals (terminal secrets, working
keys, partner secrets, customers' data keys: keys.py's Purposes) and re-sealing it, in
one change of the one write path (core/writes.py).
Used by: `python -m core.admin rotate-master-key` (the server stopped: a
running server still holds the old key and would seal new sign-ons under
it).

Why rotate: a master key that leaked must be replaced; and a copy of the
store made before an erasure (a backup) still holds the erased customer's
data key sealed under the master key of its day. Once that key is
destroyed after a rotation (the old key file shredded, or the old key
object deleted from the token), nothing in such a copy opens any more.
Nothing else changes: the terminals keep their secrets and working keys,
the customers their data keys; only the sealing around them is new.
"""

import msgspec

from core.admin import audit, keys
from core.admin.model import Customer, FieldCipher, Partner, Terminal, pack, unpack
from core.admin.terminals import put_terminal
from core.store import Store, rows
from core.writes import DirectWriter


class Rotated(msgspec.Struct, frozen=True):
    terminals: int
    working_keys: int
    customers: int
    partners: int = 0


def rotate_master_key(store: Store, old: keys.MasterKey, new: keys.MasterKey, actor: str, now_ms: int) -> Rotated:
    """Re-seal every sealed value under `new`; keys.SealError (and nothing
    written) if one does not open under `old`."""
    def change(txn) -> Rotated:
        terminals, working_keys = _rotate_terminals(txn, store, old, new)
        rotated = Rotated(terminals, working_keys, _rotate_customers(txn, store, old, new),
                          _rotate_partners(txn, store, old, new))
        audit.append(txn, store, now_ms, actor, 0, "RotateMasterKey", f"master key: {new.description}",
                     None, rotated)
        return rotated

    return DirectWriter(store).write_blocking(change)


def _rotate_terminals(txn, store: Store, old, new) -> tuple[int, int]:
    terminals = working_keys = 0
    for _, value in list(rows(txn, store.admin_terminals)):
        terminal = unpack(Terminal, value)
        secret = keys.unseal(old, keys.Purpose.TERMINAL_SECRET, terminal.terminal_id, 0, terminal.secret_sealed)
        changes = {"secret_sealed": keys.seal(new, keys.Purpose.TERMINAL_SECRET, terminal.terminal_id, 0, secret)}
        if terminal.key_sealed:
            working_key = keys.unseal(old, keys.Purpose.WORKING_KEY, terminal.terminal_id, terminal.key_id,
                                      terminal.key_sealed)
            changes["key_sealed"] = keys.seal(new, keys.Purpose.WORKING_KEY, terminal.terminal_id, terminal.key_id,
                                              working_key)
            working_keys += 1
        put_terminal(txn, store, msgspec.structs.replace(terminal, **changes))
        terminals += 1
    return terminals, working_keys


def _rotate_partners(txn, store: Store, old, new) -> int:
    partners = 0
    for key, value in list(rows(txn, store.admin_partners)):
        partner = unpack(Partner, value)
        secret = keys.unseal(old, keys.Purpose.PARTNER_SECRET, partner.partner_id, 0, partner.secret_sealed)
        resealed = keys.seal(new, keys.Purpose.PARTNER_SECRET, partner.partner_id, 0, secret)
        txn.put(key, pack(msgspec.structs.replace(partner, secret_sealed=resealed)), db=store.admin_partners)
        partners += 1
    return partners


def _rotate_customers(txn, store: Store, old, new) -> int:
    customers = 0
    for key, value in list(rows(txn, store.admin_customers)):
        customer = unpack(Customer, value)
        if customer.field_cipher == FieldCipher.PLAINTEXT or not customer.data_key_sealed:
            continue
        data_key = keys.unseal_data_key(old, customer.customer_id, customer.data_key_sealed)
        resealed = keys.seal_data_key(new, customer.customer_id, data_key)
        txn.put(key, pack(msgspec.structs.replace(customer, data_key_sealed=resealed)), db=store.admin_customers)
        customers += 1
    return customers
