"""AdminService and TerminalKeyService over gRPC.

Owns: the RPC handlers of tally.v1.AdminService (core.admin in a worker
thread, so that password hashing never holds up the event loop; every
change goes through the server's one write path, the group commit's writer
thread; card changes run the kernel inside the change's own transaction)
and of tally.v1.TerminalKeyService.SignOn (registered with no request
deserializer: its MAC covers the request's bytes as they came). A station
created here, and at start every station the kernel does not yet place, is
told to the kernel with its application domain (its headquarters), through
the group commit (kernel op STATION_DOMAIN).
Used by: server/app.py.

Who may call what is server/callers.py's table (checked by server/rpc.py
before a handler runs: the token, the role); the handlers get the caller
from `staff_actor()` and core.admin keeps each to its organisation's subtree.
Errors are core.errors' kinds, mapped in one place (server/errors.py).
"""

import asyncio
import concurrent.futures
import functools
import logging
import os
import threading
import time

import grpc
import msgspec
from google.protobuf.message import DecodeError

from core.admin import Admin, audit, keys
from core.admin.access import Actor, domain_of
from core.admin.cards import CardView
from core.admin.customers import CustomerProfile, CustomerView
from core.admin.directory import station_domain_op
from core.admin.model import LIST_LIMIT_DEFAULT, PARAMETER_RANGES, FieldCipher, Organisation, OrgKind, u32_key, unpack
from core.commit import GroupCommitter
from core.errors import FailedPrecondition, InvalidInput, ResourceExhausted, TallyError, Unauthenticated
from core.results import ResultCode
from core.store import rows
from server.callers import staff_actor
from server.metrics import OBSERVER
from server.requests import validate_terminal
from server.rpc import AUTHORIZATION_KEY, bearer_token
from server.terminal_auth import parse_metadata
from tally.v1 import admin_pb2, admin_pb2_grpc, common_pb2

log = logging.getLogger("tally.admin")

# ExportCustomer's chunks: half the largest message the server sends.
EXPORT_CHUNK_BYTES = 32 * 1024
SIGN_ON_PATH = "/tally.v1.TerminalKeyService/SignOn"


def limit_of(value: int) -> int:
    return value or LIST_LIMIT_DEFAULT


class Call(msgspec.Struct, frozen=True):
    actor: Actor | None
    token: str


def call_of(context) -> Call:
    token = bearer_token(dict(context.invocation_metadata() or ()).get(AUTHORIZATION_KEY, ""))
    return Call(staff_actor(), token)


def admin_rpc(method):
    """Run the handler, given the caller, in a worker thread."""

    @functools.wraps(method)
    async def wrapper(self, request, context):
        answer = await asyncio.to_thread(method, self, call_of(context), request)
        if method.__name__ == "CreateOrganisation":
            await self.tell_kernel_station_domain(answer)
        return answer

    return wrapper


class HashGate:
    """Where password hashes run: one at a time, in one thread at the lowest
    CPU priority (nice 19), with at most WAITING_MAX callers waiting (the
    rest get RESOURCE_EXHAUSTED at once). An argon2id hash takes 19 MiB and
    tens of milliseconds of a core on purpose (core/admin/passwords.py):
    without this a flood of logins took the server from 70 to 464 MB and
    Pay's median from 7 to 36 ms.

    While payments flow (payments_flowing()), checks also start at most
    PAYING_CHECKS_PER_S a second, PAYING_CHECKS_BURST at once after a pause:
    even at the lowest priority a hash's memory sweeps the caches the
    payments run in, and with one thread at nice 19 a flood of wrong logins
    still got 2.7 hashes a second through and moved Pay's p99 x1.37 (issue
    15's target: 1.2). A quiet server checks as fast as the thread goes."""

    WAITING_MAX = 32
    PAYING_CHECKS_PER_S = 1.0
    PAYING_CHECKS_BURST = 3

    def __init__(self, payments_flowing=lambda: False):
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="tally-hash",
                                                               initializer=_lowest_priority)
        self._waiting = 0
        self._payments_flowing = payments_flowing
        # The earliest start of the next check while payments flow (a
        # token bucket kept as a time: GCRA), monotonic seconds.
        self._next_start_s = 0.0

    async def run(self, function, *args):
        if self._waiting >= self.WAITING_MAX:
            raise ResourceExhausted(f"{self._waiting} logins or password changes are waiting already: retry in a second",
                                    reason="LOGINS_BUSY")
        self._waiting += 1
        try:
            delay_s = self._turn_delay_s() if self._payments_flowing() else 0.0
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(function, *args))
        finally:
            self._waiting -= 1

    def _turn_delay_s(self) -> float:
        """How long this check waits for its turn at PAYING_CHECKS_PER_S."""
        interval_s = 1.0 / self.PAYING_CHECKS_PER_S
        now_s = time.monotonic()
        start_s = max(self._next_start_s, now_s - (self.PAYING_CHECKS_BURST - 1) * interval_s)
        self._next_start_s = start_s + interval_s
        return start_s - now_s


def _lowest_priority():
    """Nice 19 for the calling thread alone (Linux: a thread id is a
    process id for setpriority), so that hashing yields the CPU to payments.
    Not SCHED_IDLE: on a saturated machine that starved the thread for
    seconds, and staff could not log in."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (OSError, AttributeError):
        log.warning("could not lower the password hashing thread's priority")


def hashing_rpc(method):
    """admin_rpc for the RPCs that hash a password: through the HashGate."""

    @functools.wraps(method)
    async def wrapper(self, request, context):
        return await self.hashes.run(method, self, call_of(context), request)

    return wrapper


def admin_stream(method):
    """admin_rpc for a server-streaming RPC: the handler returns the list
    of messages to send, made whole before the first is sent."""

    @functools.wraps(method)
    async def wrapper(self, request, context):
        for answer in await asyncio.to_thread(method, self, call_of(context), request):
            yield answer

    return wrapper


# ---------------------------------------------------------------- messages


def organisation_message(org) -> admin_pb2.Organisation:
    return admin_pb2.Organisation(org_id=org.org_id, parent_id=org.parent_id, kind=int(org.kind), name=org.name,
                                  address=org.address, created_ms=org.created_ms)


def terminal_message(terminal) -> admin_pb2.TerminalRecord:
    return admin_pb2.TerminalRecord(
        terminal_id=terminal.terminal_id, station_id=terminal.station_id, name=terminal.name, status=int(terminal.status),
        disabled_reason=terminal.disabled_reason, registered_ms=terminal.registered_ms,
        key_id=terminal.key_id, key_expires_ms=terminal.key_expires_ms, signon_ms=terminal.signon_ms,
        key_algorithm=int(terminal.key_algorithm))


def user_message(user) -> admin_pb2.User:
    return admin_pb2.User(username=user.username, org_id=user.org_id, role=int(user.role), enabled=user.enabled,
                          created_ms=user.created_ms, password_changed_ms=user.password_changed_ms,
                          failed_logins=user.failed_logins, locked_until_ms=user.locked_until_ms)


def partner_message(partner) -> admin_pb2.Partner:
    return admin_pb2.Partner(partner_id=partner.partner_id, org_id=partner.org_id, name=partner.name,
                             status=int(partner.status), disabled_reason=partner.disabled_reason,
                             registered_ms=partner.registered_ms)


def operator_message(operator) -> admin_pb2.Operator:
    return admin_pb2.Operator(operator_id=operator.operator_id, org_id=operator.org_id, name=operator.name,
                              enabled=operator.enabled)


def category_message(category) -> admin_pb2.Category:
    return admin_pb2.Category(org_id=category.org_id, code=category.code, name=category.name)


def goods_message(goods) -> admin_pb2.Goods:
    return admin_pb2.Goods(org_id=goods.org_id, code=goods.code, name=goods.name, category=goods.category,
                           unit=goods.unit, price_minor=goods.price_minor)


def audit_message(entry) -> admin_pb2.AuditEntry:
    return admin_pb2.AuditEntry(seq=entry.seq, time_ms=entry.time_ms, actor=entry.actor, org_id=entry.org_id,
                                action=entry.action, object=entry.object, before=entry.before, after=entry.after,
                                prev_hash=entry.prev_hash, hash=entry.hash)


def card_message(view: CardView) -> admin_pb2.CardRecord:
    return admin_pb2.CardRecord(
        card_id=view.card_id, org_id=view.org_id, customer_id=view.customer_id, card_type=int(view.card_type),
        status=int(view.status), activated=view.activated, limit_per_transaction_minor=view.limit_per_transaction_minor,
        limit_per_day_minor=view.limit_per_day_minor,
        balances=common_pb2.Balances(fleet_minor=view.fleet_minor, personal_minor=view.personal_minor,
                                     points=view.points),
        held=common_pb2.Balances(fleet_minor=view.held_fleet_minor, personal_minor=view.held_personal_minor,
                                 points=view.held_points),
        refund_payable_minor=view.refund_payable_minor, tier=int(view.tier), vehicle_plate=view.vehicle_plate,
        allowed_goods=view.allowed_goods, allowed_stations=view.allowed_stations, domains=view.domains,
        status_reason=view.status_reason, issued_ms=view.issued_ms, activated_ms=view.activated_ms)


def customer_message(view: CustomerView) -> admin_pb2.Customer:
    customer = view.customer
    return admin_pb2.Customer(
        customer_id=customer.customer_id, org_id=customer.org_id,
        profile=admin_pb2.CustomerProfile(name=customer.name, phone=customer.phone, email=customer.email,
                                          address=customer.address, birth_date=customer.birth_date),
        tier=int(view.tier), card_ids=view.card_ids, created_ms=customer.created_ms, updated_ms=customer.updated_ms,
        erased_ms=customer.erased_ms, erasure_reference=customer.erasure_reference)


def profile_of(message: admin_pb2.CustomerProfile) -> CustomerProfile:
    return CustomerProfile(name=message.name, phone=message.phone, email=message.email, address=message.address,
                           birth_date=message.birth_date)


def parameters_message(headquarters_id: int, parameters) -> admin_pb2.Parameters:
    return admin_pb2.Parameters(headquarters_id=headquarters_id, token_validity_s=parameters.token_validity_s,
                                working_key_validity_s=parameters.working_key_validity_s,
                                login_failures_max=parameters.login_failures_max,
                                login_lockout_s=parameters.login_lockout_s)


# ---------------------------------------------------------------- AdminService


class AdminService(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, admin: Admin, committer: GroupCommitter | None = None):
        self.admin = admin
        self.committer = committer
        self.hashes = HashGate(committer.payments_flowing) if committer is not None else HashGate()

    async def tell_kernel_station_domain(self, org: admin_pb2.Organisation):
        """A new station's application domain (its headquarters) goes to the
        kernel, which refuses there the cards not enabled for that domain."""
        if self.committer is not None and org.kind == admin_pb2.ORGANISATION_KIND_STATION:
            await set_station_domain(self.committer, org.org_id, self.admin.domain_of(org.org_id))

    @hashing_rpc
    def Login(self, call, request):
        try:
            token, user, expires_ms = self.admin.login(request.username, request.password)
        except Unauthenticated as error:
            OBSERVER.login_failed(error.reason)
            raise
        return admin_pb2.LoginAnswer(token=token, expires_ms=expires_ms, user=user_message(user))

    @admin_rpc
    def Logout(self, call, request):
        self.admin.logout(call.actor, call.token)
        return admin_pb2.LogoutAnswer()

    @admin_rpc
    def WhoAmI(self, call, request):
        return user_message(self.admin.get_user(call.actor, call.actor.name.removeprefix("user:")))

    # ------------------------------------------------------------ organisations

    @admin_rpc
    def CreateOrganisation(self, call, request):
        return organisation_message(self.admin.create_organisation(
            call.actor, request.parent_id, request.kind, request.name, request.address, request.org_id))

    @admin_rpc
    def UpdateOrganisation(self, call, request):
        return organisation_message(self.admin.update_organisation(call.actor, request.org_id, request.name, request.address))

    @admin_rpc
    def GetOrganisation(self, call, request):
        return organisation_message(self.admin.get_organisation(call.actor, request.org_id))

    @admin_rpc
    def ListOrganisations(self, call, request):
        found, truncated = self.admin.list_organisations(call.actor, request.kind, limit_of(request.limit))
        return admin_pb2.ListOrganisationsAnswer(organisations=map(organisation_message, found), truncated=truncated)

    # ------------------------------------------------------------ terminals

    @admin_rpc
    def RegisterTerminal(self, call, request):
        # UNSPECIFIED (0): the default suite; the proto's numbers are keys.KeyAlgorithm's.
        algorithm = request.key_algorithm or keys.KeyAlgorithm.AES_HMAC_SHA256
        terminal, secret = self.admin.register_terminal(call.actor, request.terminal_id, request.station_id, request.name,
                                                        algorithm)
        return admin_pb2.RegisterTerminalAnswer(terminal=terminal_message(terminal), secret_key=secret)

    @admin_rpc
    def DisableTerminal(self, call, request):
        return terminal_message(self.admin.disable_terminal(call.actor, request.terminal_id, request.reason))

    @admin_rpc
    def EnableTerminal(self, call, request):
        return terminal_message(self.admin.enable_terminal(call.actor, request.terminal_id))

    @admin_rpc
    def GetTerminal(self, call, request):
        return terminal_message(self.admin.get_terminal(call.actor, request.terminal_id))

    @admin_rpc
    def ListTerminals(self, call, request):
        found, truncated = self.admin.list_terminals(call.actor, request.station_id, limit_of(request.limit))
        return admin_pb2.ListTerminalsAnswer(terminals=map(terminal_message, found), truncated=truncated)

    # ------------------------------------------------------------ operators, goods

    @admin_rpc
    def SetOperator(self, call, request):
        operator = request.operator
        return operator_message(self.admin.set_operator(call.actor, operator.operator_id, operator.org_id, operator.name,
                                                        operator.enabled))

    @admin_rpc
    def ListOperators(self, call, request):
        found, truncated = self.admin.list_operators(call.actor, request.org_id, limit_of(request.limit))
        return admin_pb2.ListOperatorsAnswer(operators=map(operator_message, found), truncated=truncated)

    @admin_rpc
    def SetCategory(self, call, request):
        category = request.category
        return category_message(self.admin.set_category(call.actor, category.org_id, category.code, category.name))

    @admin_rpc
    def ListCategories(self, call, request):
        found, truncated = self.admin.list_categories(call.actor, request.org_id, limit_of(request.limit))
        return admin_pb2.ListCategoriesAnswer(categories=map(category_message, found), truncated=truncated)

    @admin_rpc
    def SetGoods(self, call, request):
        goods = request.goods
        return goods_message(self.admin.set_goods(call.actor, goods.org_id, goods.code, goods.name, goods.category,
                                                  goods.unit, goods.price_minor))

    @admin_rpc
    def ListGoods(self, call, request):
        found, truncated = self.admin.list_goods(call.actor, request.org_id, limit_of(request.limit))
        return admin_pb2.ListGoodsAnswer(goods=map(goods_message, found), truncated=truncated)

    # ------------------------------------------------------------ parameters

    @admin_rpc
    def GetParameters(self, call, request):
        return parameters_message(*self.admin.get_parameters(call.actor))

    @admin_rpc
    def SetParameters(self, call, request):
        changes = {name: getattr(request, name) for name in PARAMETER_RANGES if request.HasField(name)}
        parameters = self.admin.set_parameters(call.actor, changes)
        return parameters_message(call.actor.org_id, parameters)

    # ------------------------------------------------------------ users

    @hashing_rpc
    def CreateUser(self, call, request):
        return user_message(self.admin.create_user(call.actor, request.username, request.password, request.org_id,
                                                   request.role))

    @admin_rpc
    def UpdateUser(self, call, request):
        role = request.role if request.HasField("role") else None
        enabled = request.enabled if request.HasField("enabled") else None
        return user_message(self.admin.update_user(call.actor, request.username, role, enabled))

    @hashing_rpc
    def SetPassword(self, call, request):
        return user_message(self.admin.set_password(call.actor, request.username, request.new_password,
                                                    request.old_password))

    @admin_rpc
    def GetUser(self, call, request):
        return user_message(self.admin.get_user(call.actor, request.username))

    @admin_rpc
    def ListUsers(self, call, request):
        found, truncated = self.admin.list_users(call.actor, request.org_id, limit_of(request.limit))
        return admin_pb2.ListUsersAnswer(users=map(user_message, found), truncated=truncated)

    # ------------------------------------------------------------ audit

    @admin_rpc
    def ReadAudit(self, call, request):
        found, truncated = self.admin.read_audit(call.actor, request.after_seq, limit_of(request.limit))
        return admin_pb2.ReadAuditAnswer(entries=map(audit_message, found), truncated=truncated)

    @admin_rpc
    def VerifyAudit(self, call, request):
        result: audit.Verification = self.admin.verify_audit()
        return admin_pb2.VerifyAuditAnswer(
            intact=result.intact, entries=result.entries, head_seq=result.head_seq, head_hash=result.head_hash,
            breaches=[admin_pb2.AuditBreach(seq=breach.seq, reason=breach.reason) for breach in result.breaches])


    # ------------------------------------------------------------ cards
    # Here rather than in CardService: see the service's comment in
    # proto/tally/v1/admin.proto (a back-office change needs the user, the
    # role, the domain and an audit entry; CardService has no caller).

    @admin_rpc
    def IssueCard(self, call, request):
        return card_message(self.admin.issue_card(
            call.actor, request.card_id, request.org_id, request.card_type, request.limit_per_transaction_minor,
            request.limit_per_day_minor, request.customer_id, request.vehicle_plate))

    @admin_rpc
    def ActivateCard(self, call, request):
        return card_message(self.admin.activate_card(call.actor, request.card_id))

    @admin_rpc
    def TopUpCard(self, call, request):
        done = self.admin.top_up_card(call.actor, request.card_id, request.account, request.amount_minor,
                                      request.request_id)
        return admin_pb2.TopUpCardAnswer(txn_id=done.txn_id, card=card_message(done.card), replayed=done.replayed)

    @admin_rpc
    def ReportCardLost(self, call, request):
        return card_message(self.admin.report_card_lost(call.actor, request.card_id, request.reason))

    @admin_rpc
    def FreezeCard(self, call, request):
        return card_message(self.admin.freeze_card(call.actor, request.card_id, request.reason))

    @admin_rpc
    def UnfreezeCard(self, call, request):
        return card_message(self.admin.unfreeze_card(call.actor, request.card_id))

    @admin_rpc
    def CancelCard(self, call, request):
        done = self.admin.cancel_card(call.actor, request.card_id, request.reason)
        return admin_pb2.CancelCardAnswer(txn_id=done.txn_id, refund_minor=done.amount, fleet_minor=done.fleet,
                                          personal_minor=done.personal, points_lapsed=done.points,
                                          card=card_message(done.card))

    @admin_rpc
    def ChangeCardLimits(self, call, request):
        return card_message(self.admin.change_card_limits(
            call.actor, request.card_id, request.limit_per_transaction_minor, request.limit_per_day_minor))

    @admin_rpc
    def SetVehiclePlate(self, call, request):
        return card_message(self.admin.set_vehicle_plate(call.actor, request.card_id, request.vehicle_plate))

    @admin_rpc
    def AllowCardStation(self, call, request):
        return card_message(self.admin.allow_card_station(call.actor, request.card_id, request.station_id))

    @admin_rpc
    def SetAllowedGoods(self, call, request):
        return card_message(self.admin.set_allowed_goods(call.actor, request.card_id, request.allowed_goods))

    @admin_rpc
    def EnableCardDomain(self, call, request):
        return card_message(self.admin.enable_card_domain(call.actor, request.card_id, request.domain_id))

    @admin_rpc
    def GetCardRecord(self, call, request):
        return card_message(self.admin.get_card(call.actor, request.card_id))

    @admin_rpc
    def ListCardRecords(self, call, request):
        found, truncated = self.admin.list_cards(call.actor, request.org_id, request.customer_id,
                                                 limit_of(request.limit), request.vehicle_plate)
        return admin_pb2.ListCardRecordsAnswer(cards=map(card_message, found), truncated=truncated)

    # ------------------------------------------------------------ customers

    @admin_rpc
    def CreateCustomer(self, call, request):
        return customer_message(self.admin.create_customer(call.actor, request.org_id, profile_of(request.profile),
                                                           request.customer_id))

    @admin_rpc
    def UpdateCustomer(self, call, request):
        return customer_message(self.admin.update_customer(call.actor, request.customer_id,
                                                           profile_of(request.profile)))

    @admin_rpc
    def GetCustomer(self, call, request):
        return customer_message(self.admin.get_customer(call.actor, request.customer_id))

    @admin_rpc
    def ListCustomers(self, call, request):
        found, truncated = self.admin.list_customers(call.actor, request.org_id, limit_of(request.limit))
        return admin_pb2.ListCustomersAnswer(customers=map(customer_message, found), truncated=truncated)

    @admin_stream
    def ExportCustomer(self, call, request):
        document = self.admin.export_customer(call.actor, request.customer_id)
        return [admin_pb2.ExportChunk(data=document[offset:offset + EXPORT_CHUNK_BYTES])
                for offset in range(0, len(document), EXPORT_CHUNK_BYTES)]

    @admin_rpc
    def EraseCustomer(self, call, request):
        return customer_message(self.admin.erase_customer(call.actor, request.customer_id, request.reason))

    # ------------------------------------------------------------ logins and partners

    @admin_rpc
    def UnlockUser(self, call, request):
        return user_message(self.admin.unlock_user(call.actor, request.username, request.reason))

    @admin_rpc
    def RegisterPartner(self, call, request):
        partner, secret = self.admin.register_partner(call.actor, request.partner_id, request.org_id, request.name)
        return admin_pb2.RegisterPartnerAnswer(partner=partner_message(partner), secret_key=secret)

    @admin_rpc
    def DisablePartner(self, call, request):
        return partner_message(self.admin.disable_partner(call.actor, request.partner_id, request.reason))

    @admin_rpc
    def ListPartners(self, call, request):
        found, truncated = self.admin.list_partners(call.actor, limit_of(request.limit))
        return admin_pb2.ListPartnersAnswer(partners=map(partner_message, found), truncated=truncated)


# ---------------------------------------------------------------- TerminalKeyService


def terminal_key_handler(admin: Admin) -> grpc.GenericRpcHandler:
    """TerminalKeyService, with SignOn receiving its request's wire bytes."""

    async def sign_on(body: bytes, context):
        terminal_id, key_id, serial, mac = parse_metadata(context.invocation_metadata())
        try:
            request = admin_pb2.KeySignOnRequest.FromString(body)
        except DecodeError:
            raise InvalidInput("request", "does not parse as tally.v1.KeySignOnRequest", reason="UNPARSABLE") from None
        terminal = request.terminal
        validate_terminal(terminal)
        if (terminal.terminal_id, terminal.serial) != (terminal_id, serial):
            raise Unauthenticated(f"terminal.terminal_id and terminal.serial must equal {keys.METADATA_TERMINAL} and "
                                  f"{keys.METADATA_SERIAL}", reason="SERIAL_MISMATCH")
        signed_on = await asyncio.to_thread(admin.sign_on, SIGN_ON_PATH, terminal_id, terminal.station_id, serial,
                                            key_id, mac, body)
        log.info("terminal %d signed on: working key %d", terminal_id, signed_on.key_id)
        return admin_pb2.KeySignOnAnswer(key_id=signed_on.key_id, wrapped_key=signed_on.wrapped_key,
                                         expires_ms=signed_on.expires_ms, key_algorithm=int(signed_on.key_algorithm))

    return grpc.method_handlers_generic_handler("tally.v1.TerminalKeyService", {
        "SignOn": grpc.unary_unary_rpc_method_handler(sign_on, response_serializer=admin_pb2.KeySignOnAnswer.SerializeToString),
    })


# ---------------------------------------------------------------- wiring


def load_master_key_of(settings) -> keys.MasterKey | None:
    """The master key of --master-key-file or --pkcs11-module (a PKCS#11
    token, opened here: in each worker after the fork), or None; a key that
    cannot be had stops the start with one line saying why."""
    try:
        if settings.master_key_file is not None:
            master_key = keys.SoftwareMasterKey.from_file(settings.master_key_file)
        elif settings.pkcs11_module is not None:
            from core.admin import hsm

            master_key = hsm.Pkcs11MasterKey(hsm.TokenConfig(settings.pkcs11_module, settings.pkcs11_token_label,
                                                             settings.pkcs11_key_label, settings.pkcs11_pin_file))
        else:
            log.warning("no master key: terminals cannot be registered or sign on, and customers' personal fields "
                        "are stored in the clear")
            return None
    except (TallyError, ValueError) as error:
        raise SystemExit(f"python -m server: {error}") from None
    log.info("master key: %s", master_key.description)
    return master_key


def field_cipher_of(settings) -> FieldCipher:
    """--pii-cipher as the record's enum."""
    return {"aes": FieldCipher.AES_256_GCM, "sm4": FieldCipher.SM4_GCM}[settings.pii_cipher]


def add_admin_services(server, admin: Admin, committer: GroupCommitter | None = None):
    admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminService(admin, committer), server)
    server.add_generic_rpc_handlers((terminal_key_handler(admin),))


async def set_station_domain(committer: GroupCommitter, station_id: int, domain: int):
    result = await committer.submit(station_domain_op(station_id, domain))
    if result.code != ResultCode.APPROVED:
        raise FailedPrecondition(f"the kernel refused the domain of station {station_id}: {ResultCode(result.code).name}")


def stations_out_of_step(store) -> list[tuple[int, int]]:
    """(station, its headquarters) for every station of the organisation
    tree whose application domain the kernel does not know (yet)."""
    with store.env.begin() as txn:
        stations = [org.org_id for org in (unpack(Organisation, value) for _, value in rows(txn, store.admin_orgs))
                    if org.kind == OrgKind.STATION]
        wanted = [(station, domain_of(txn, store, station)) for station in stations]
        return [(station, domain) for station, domain in wanted
                if txn.get(u32_key(station), db=store.station_domains) != domain.to_bytes(4, "little")]


async def sync_station_domains(store, committer: GroupCommitter):
    """At start: tell the kernel each station's domain it is missing (a
    station made by the command line, or one whose answer a crash lost)."""
    for station, domain in stations_out_of_step(store):
        await set_station_domain(committer, station, domain)
        log.info("station %d: application domain %d", station, domain)


SERVICE_NAMES = (
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["TerminalKeyService"].full_name,
)
