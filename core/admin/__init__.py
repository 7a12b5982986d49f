"""Administration and security: organisations, users, terminals and their
keys, the audit log.

Owns (one module each):
  model.py       the records, their limits, the admin_* database keys
  access.py      callers (Actor), the permission table per RPC, domains
  directory.py   organisations (headquarters, region, station), operators,
                 goods and categories, a domain's parameters
  users.py       users, argon2id passwords (passwords.py), bearer tokens
  terminals.py   registration, disabling, daily sign-on, working keys
  cards.py       cards for back-office users: issue to cancel, owner records
  customers.py   card holders: profile, tier, export, erasure on request
  partners.py    partner programmes: registration, their keys
  keys.py        master key, sealing, key derivation, the terminal MAC
                 (AES/HMAC-SHA256 or SM4/CMAC-SM4), field encryption
  hsm.py         the master key and the audit head's key in a PKCS#11 token
  audit.py       the hash-chained audit log and its check
  terminal_client.py   the POS side: sign on, MAC every request
  __main__.py    `python -m core.admin` (first administrator, terminals, audit)
Used by: server/admin_service.py (AdminService, TerminalService),
server/terminal_auth.py (the interceptor), tests.

`Admin` below is the whole API in one object over an open store. Every
method takes the Actor that acts; it sees and changes only its own
organisation's subtree, and each change is written with its audit entry in
one LMDB write transaction.
"""

from core.admin import audit
from core.admin.access import Actor, require_range, subtree
from core.admin.cards import CardsMixin
from core.admin.customers import CustomersMixin
from core.admin.directory import DirectoryMixin
from core.admin.model import LIST_LIMIT_MAX, AuditEntry, AuditHead
from core.admin.partners import PartnersMixin
from core.admin.terminals import TerminalsMixin
from core.admin.users import UsersMixin


class Admin(DirectoryMixin, UsersMixin, TerminalsMixin, CardsMixin, CustomersMixin, PartnersMixin):
    """Administration over an open store (see the mixins for each part)."""

    def read_audit(self, actor: Actor, after_seq: int = 0, limit: int = LIST_LIMIT_MAX) -> tuple[list[AuditEntry], bool]:
        """Entries of the actor's subtree after `after_seq`, oldest first."""
        require_range(limit, "limit", 1, LIST_LIMIT_MAX)

        def look(txn):
            found = audit.read(txn, self.store, subtree(txn, self.store, actor), after_seq, limit + 1)
            return found[:limit], len(found) > limit

        return self._read(look)

    def verify_audit(self, expected: AuditHead | None = None) -> audit.Verification:
        """The whole chain, every domain's entries: one chain for all; with
        `expected`, also against that published head (core/admin/audit.py)."""
        return audit.verify(self.store, expected)
