# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Pay above the kernel, compiled and batch-wise: a gateway message of Pays read from its wire bytes, the kernel operations built for all of them, the answers written as wire bytes.

Owns: the plain Pay's per-payment work on the hot path (issue 20): reading
each PayRequest of a GatewayMessage, checking it, building its Op and its
fingerprint; and, once the kernel answered, each GatewayResult's bytes (the
PaymentAnswer with its receipt and points items). No protobuf object is
made for either side.
Mirror of: server/requests.py pay_op (what is valid, the Op and its
fingerprint) and server/answers.py payment_answer (the answer); those stay
the readable reference and the path of everything this module declines.
tests/test_fastpay.py holds the two equal over random requests: the same Op
bytes, or the reference refusing what this module sends back to it; the same
answer bytes.
Used by: server/stream.py (GatewayService), through server/payline.py;
server/rpc.py's unary Pay, through server/payline.py, and under
--terminal-auth through server/terminal_auth.py (TerminalGuard.pass_pay:
terminal_pay, the section at the end, checks a terminal's plain Pay from
its wire bytes and metadata).

What it declines, to the reference path, request by request: anything that
is not plainly valid (the reference raises the precise InvalidInput), a
basket or coupon codes, bytes not encoded the way protobuf encodes them
(the fingerprint hashes the request's canonical encoding: when the wire
bytes are not it, the reference re-encodes), a business day past year 9999.
Whether the server's state allows the plain path at all (no promotions to
price, no risk limits, ...) is server/payline.py's to say.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.stdio cimport snprintf
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy, memset

import hashlib
from hmac import compare_digest

from core import limits as _limits
from core import records as _records
from core import results as _results

from core.admin import keys as _keys
from core.kernel cimport OpRec, ResultRec

cdef extern from "Python.h":
    object PyUnicode_DecodeUTF8(const char* data, Py_ssize_t size, const char* errors)

# ------------------------------------------------------------ constants

cdef uint32_t STATION_ID_MAX = _limits.STATION_ID_MAX
cdef uint32_t TERMINAL_ID_MAX = _limits.TERMINAL_ID_MAX
cdef uint64_t SERIAL_MAX = _limits.SERIAL_MAX
cdef uint32_t OPERATOR_ID_MAX = _limits.OPERATOR_ID_MAX
cdef int64_t AMOUNT_MINOR_MAX = _limits.AMOUNT_MINOR_MAX
cdef int64_t POINTS_MAX = _limits.POINTS_MAX
cdef int64_t CHANNEL_LAST = max(int(channel) for channel in _results.Channel)
cdef uint8_t KIND_PAY = _results.OpKind.PAY
cdef uint8_t USE_FLEET = _results.PlanFlag.USE_FLEET
cdef uint8_t USE_PERSONAL = _results.PlanFlag.USE_PERSONAL
cdef uint8_t USE_POINTS = _results.PlanFlag.USE_POINTS
cdef int APPROVED = _results.ResultCode.APPROVED
cdef int PENDING = _results.ResultCode.PENDING
cdef int CARD_NOT_FOUND = _results.ResultCode.CARD_NOT_FOUND
cdef int KIND_PREAUTH = _results.OpKind.PREAUTH
cdef uint8_t RESULT_REPLAYED = _records.RESULT_REPLAYED
# Days since 1970-01-01 of 9999-12-31: the last date Python's datetime writes.
cdef int64_t DAY_MAX = 2_932_896

assert sizeof(OpRec) == _records.Op.LAYOUT.size and sizeof(ResultRec) == _records.Result.LAYOUT.size

# Protobuf wire types.
cdef enum:
    WIRE_VARINT = 0
    WIRE_LENGTH = 2

# What parse_request found.
cdef enum:
    PARSED_PLAIN = 0       # canonical, and of the plain path's shape
    PARSED_OTHER = 1       # for the reference path


cdef struct PayFields:
    # The request's canonical bytes, within the message
    Py_ssize_t offset
    Py_ssize_t length
    bint has_terminal
    uint64_t station_id
    uint64_t terminal_id
    uint64_t serial
    uint64_t operator_id
    int64_t amount_minor
    uint64_t card_id
    bint use_fleet
    bint use_personal
    bint use_points
    int64_t points_max
    int64_t channel


# ------------------------------------------------------------ reading the wire

cdef inline bint read_varint(const uint8_t* data, Py_ssize_t end, Py_ssize_t* position, uint64_t* value) noexcept:
    """A varint at *position, encoded in its fewest bytes (the only way
    protobuf writes one); False otherwise."""
    cdef uint64_t result = 0
    cdef int shift = 0
    cdef Py_ssize_t at = position[0]
    cdef uint8_t byte
    cdef int count = 0
    while at < end and count < 10:
        byte = data[at]
        at += 1
        count += 1
        if count == 10 and byte > 1:
            return False
        result |= (<uint64_t>(byte & 0x7F)) << shift
        if not byte & 0x80:
            if count > 1 and byte == 0:
                return False  # a longer encoding than needed
            position[0] = at
            value[0] = result
            return True
        shift += 7
    return False


cdef inline bint read_tag(const uint8_t* data, Py_ssize_t end, Py_ssize_t* position, uint32_t last_field,
                          uint32_t* field, int* wire) noexcept:
    """The next field's number and wire type; False unless its number is
    above last_field (protobuf writes fields in number order, each once)."""
    cdef uint64_t tag
    if not read_varint(data, end, position, &tag) or tag >> 3 <= last_field or tag >> 3 > 1000:
        return False
    field[0] = <uint32_t>(tag >> 3)
    wire[0] = <int>(tag & 7)
    return True


cdef inline bint read_length(const uint8_t* data, Py_ssize_t end, Py_ssize_t* position, Py_ssize_t* stop) noexcept:
    cdef uint64_t length
    if not read_varint(data, end, position, &length) or length > <uint64_t>(end - position[0]):
        return False
    stop[0] = position[0] + <Py_ssize_t>length
    return True


cdef bint read_terminal(const uint8_t* data, Py_ssize_t end, Py_ssize_t position, PayFields* fields) noexcept:
    """TerminalContext: station_id, terminal_id, serial, operator_id."""
    cdef uint32_t field
    cdef uint32_t last = 0
    cdef int wire
    cdef uint64_t value
    while position < end:
        if not read_tag(data, end, &position, last, &field, &wire) or wire != WIRE_VARINT or field > 4:
            return False
        if not read_varint(data, end, &position, &value) or value == 0:
            return False
        if field != 3 and value > 0xFFFFFFFF:
            return False
        if field == 1:
            fields.station_id = value
        elif field == 2:
            fields.terminal_id = value
        elif field == 3:
            fields.serial = value
        else:
            fields.operator_id = value
        last = field
    return True


cdef bint read_plan(const uint8_t* data, Py_ssize_t end, Py_ssize_t position, PayFields* fields) noexcept:
    """PaymentPlan: card_id, use_fleet, use_personal, use_points, points_max, channel."""
    cdef uint32_t field
    cdef uint32_t last = 0
    cdef int wire
    cdef uint64_t value
    while position < end:
        if not read_tag(data, end, &position, last, &field, &wire) or wire != WIRE_VARINT or field > 6:
            return False
        if not read_varint(data, end, &position, &value) or value == 0:
            return False
        if field == 1:
            fields.card_id = value
        elif field <= 4:
            if value != 1:
                return False
            if field == 2:
                fields.use_fleet = True
            elif field == 3:
                fields.use_personal = True
            else:
                fields.use_points = True
        elif field == 5:
            fields.points_max = <int64_t>value
        else:
            # An enum is an int32, a negative one sign-extended to 64 bits.
            if value >= 0x80000000 and value < 0xFFFFFFFF80000000:
                return False
            fields.channel = <int32_t><int64_t>value
        last = field
    return True


cdef int read_request(const uint8_t* data, Py_ssize_t end, Py_ssize_t position, PayFields* fields) noexcept:
    """A PayRequest between position and end."""
    cdef uint32_t field
    cdef uint32_t last = 0
    cdef int wire
    cdef uint64_t value
    cdef Py_ssize_t stop
    memset(fields, 0, sizeof(PayFields))
    while position < end:
        if not read_tag(data, end, &position, last, &field, &wire):
            return PARSED_OTHER
        if field == 2 and wire == WIRE_VARINT:
            if not read_varint(data, end, &position, &value) or value == 0:
                return PARSED_OTHER
            fields.amount_minor = <int64_t>value
        elif (field == 1 or field == 4) and wire == WIRE_LENGTH:
            if not read_length(data, end, &position, &stop):
                return PARSED_OTHER
            if field == 1:
                fields.has_terminal = True
                if not read_terminal(data, stop, position, fields):
                    return PARSED_OTHER
            elif not read_plan(data, stop, position, fields):
                return PARSED_OTHER
            position = stop
        else:
            return PARSED_OTHER  # a basket, coupon codes, or a field this version does not know
        last = field
    return PARSED_PLAIN


cdef inline bint plainly_valid(const PayFields* fields) noexcept:
    """Mirror of requests.pay_op's checks (validate_terminal, the amount,
    the plan): True when none of them refuses."""
    if not (fields.station_id or fields.terminal_id or fields.serial or fields.operator_id):
        return False
    if not 1 <= fields.station_id <= STATION_ID_MAX or not 1 <= fields.terminal_id <= TERMINAL_ID_MAX:
        return False
    if not 1 <= fields.serial <= SERIAL_MAX or not 1 <= fields.operator_id <= OPERATOR_ID_MAX:
        return False
    if not 1 <= fields.amount_minor <= AMOUNT_MINOR_MAX:
        return False
    if not 0 <= fields.points_max <= POINTS_MAX or not 0 <= fields.channel <= CHANNEL_LAST:
        return False
    if fields.card_id == 0 and fields.channel == 0:
        return False
    if fields.card_id != 0 and not (fields.use_fleet or fields.use_personal or fields.use_points) and fields.channel == 0:
        return False
    return True


# ------------------------------------------------------------ writing the wire

cdef struct Out:
    char* data
    Py_ssize_t size
    Py_ssize_t capacity


cdef int out_reserve(Out* out, Py_ssize_t more) except -1:
    cdef Py_ssize_t wanted = out.size + more
    cdef Py_ssize_t capacity
    cdef char* grown
    if wanted <= out.capacity:
        return 0
    capacity = out.capacity * 2 if out.capacity else 512
    while capacity < wanted:
        capacity *= 2
    grown = <char*>realloc(out.data, capacity)
    if grown == NULL:
        raise MemoryError()
    out.data = grown
    out.capacity = capacity
    return 0


cdef int put_bytes(Out* out, const char* data, Py_ssize_t size) except -1:
    out_reserve(out, size)
    memcpy(out.data + out.size, data, size)
    out.size += size
    return 0


cdef int put_varint(Out* out, uint64_t value) except -1:
    out_reserve(out, 10)
    while value >= 0x80:
        out.data[out.size] = <char>((value & 0x7F) | 0x80)
        out.size += 1
        value >>= 7
    out.data[out.size] = <char>value
    out.size += 1
    return 0


cdef int put_field_varint(Out* out, uint32_t field, uint64_t value) except -1:
    """A scalar field as protobuf writes it: nothing when it is zero."""
    if value == 0:
        return 0
    put_varint(out, (field << 3) | WIRE_VARINT)
    put_varint(out, value)
    return 0


cdef int put_field_bytes(Out* out, uint32_t field, const char* data, Py_ssize_t size, bint always) except -1:
    """A string or message field; an empty string is not written, a present
    empty message is (always)."""
    if size == 0 and not always:
        return 0
    put_varint(out, (field << 3) | WIRE_LENGTH)
    put_varint(out, <uint64_t>size)
    put_bytes(out, data, size)
    return 0


cdef int put_text(Out* out, const char* text) except -1:
    cdef Py_ssize_t size = 0
    while text[size]:
        size += 1
    return put_bytes(out, text, size)


cdef int put_int(Out* out, int64_t value) except -1:
    cdef char buffer[32]
    cdef int size = snprintf(buffer, sizeof(buffer), "%lld", <long long>value)
    return put_bytes(out, buffer, size)


cdef int put_money(Out* out, int64_t amount_minor) except -1:
    """Mirror of answers.money: 12345 -> '123.45', no floats."""
    cdef char buffer[48]
    cdef int size
    cdef uint64_t magnitude
    if amount_minor < 0:
        magnitude = <uint64_t>(-(amount_minor + 1)) + 1
        size = snprintf(buffer, sizeof(buffer), "-%llu.%02llu", <unsigned long long>(magnitude // 100), <unsigned long long>(magnitude % 100))
    else:
        size = snprintf(buffer, sizeof(buffer), "%lld.%02lld", <long long>(amount_minor // 100), <long long>(amount_minor % 100))
    return put_bytes(out, buffer, size)


cdef int put_date(Out* out, int64_t day) except -1:
    """Mirror of str(dates.date_of(day)): YYYY-MM-DD (days from 1970-01-01;
    the civil calendar by Howard Hinnant's days_from_civil inverse)."""
    cdef int64_t z = day + 719468
    cdef int64_t era = (z if z >= 0 else z - 146096) // 146097
    cdef int64_t doe = z - era * 146097
    cdef int64_t yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    cdef int64_t y = yoe + era * 400
    cdef int64_t doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    cdef int64_t mp = (5 * doy + 2) // 153
    cdef int64_t d = doy - (153 * mp + 2) // 5 + 1
    cdef int64_t m = mp + 3 if mp < 10 else mp - 9
    if m <= 2:
        y += 1
    cdef char buffer[32]
    cdef int size = snprintf(buffer, sizeof(buffer), "%04lld-%02lld-%02lld", <long long>y, <long long>m, <long long>d)
    return put_bytes(out, buffer, size)


cdef class Answers:
    """The tables an answer is written from (results' texts and names,
    receipt titles, the currency), read once from the Python ones."""

    cdef list texts       # code -> bytes (UTF-8), None: not in RESULT_TEXT
    cdef list names       # code -> bytes, None: not a ResultCode
    cdef list titles      # kind -> bytes
    cdef bytes currency

    def __init__(self, str currency):
        from server import answers

        count = max(int(code) for code in _results.ResultCode) + 1
        self.texts = [None] * count
        self.names = [None] * count
        for code, text in _results.RESULT_TEXT.items():
            self.texts[int(code)] = text.encode()
        for code, name in answers.RESULT_NAMES.items():
            self.names[code] = name.encode()
        kinds = max(int(kind) for kind in _results.OpKind) + 1
        self.titles = [b"TRANSACTION"] * kinds
        for kind, title in answers.RECEIPT_TITLES.items():
            self.titles[int(kind)] = title.encode()
        self.currency = currency.encode()

    cdef bytes text_of(self, int code):
        if 0 <= code < len(self.texts) and self.texts[code] is not None:
            return <bytes>self.texts[code]
        return b"result %d" % code

    cdef bytes name_of(self, int code):
        if 0 <= code < len(self.names) and self.names[code] is not None:
            return <bytes>self.names[code]
        return b"%d" % code

    cdef bytes title_of(self, int kind):
        if 0 <= kind < len(self.titles):
            return <bytes>self.titles[kind]
        return b"TRANSACTION"

    cdef int put_receipt(self, Out* out, const ResultRec* r, const PayFields* request) except -1:
        """Mirror of answers.receipt, for a sale without basket or promotions."""
        cdef char line[256]
        cdef int size
        put_text(out, "TALLY ")
        title = self.title_of(r.kind)
        put_bytes(out, PyBytes_AS_STRING(title), PyBytes_GET_SIZE(title))
        size = snprintf(line, sizeof(line), "\nstation %llu  terminal %llu  operator %llu\nserial %llu  txn %llu  day ",
                        <unsigned long long>request.station_id, <unsigned long long>request.terminal_id,
                        <unsigned long long>request.operator_id, <unsigned long long>request.serial, <unsigned long long>r.txn_id)
        put_bytes(out, line, size)
        put_date(out, r.business_day)
        put_text(out, "\nAMOUNT ")
        put_money(out, r.amount)
        if r.code == APPROVED:
            if r.fleet:
                put_text(out, "\n  fleet account  ")
                put_money(out, r.fleet)
            if r.personal:
                put_text(out, "\n  personal account  ")
                put_money(out, r.personal)
            if r.points_cash:
                put_text(out, "\n  points (")
                put_int(out, r.points_used)
                put_text(out, ")  ")
                put_money(out, r.points_cash)
            if r.channel_amount:
                put_text(out, "\n  channel  ")
                put_money(out, r.channel_amount)
            if r.points_earned:
                put_text(out, "\npoints earned ")
                put_int(out, r.points_earned)
            if r.points_clawed_back:
                put_text(out, "\npoints taken back ")
                put_int(out, r.points_clawed_back)
            if r.shortfall_settled:
                put_text(out, "\nkept for points already spent ")
                put_money(out, r.shortfall_settled)
        if shows_balances(r):
            put_text(out, "\nbalance fleet ")
            put_money(out, r.fleet_balance)
            put_text(out, "  personal ")
            put_money(out, r.personal_balance)
            put_text(out, "  points ")
            put_int(out, r.points_balance)
        put_text(out, "\n")
        name = self.name_of(r.code)
        put_bytes(out, PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name))
        put_text(out, ": ")
        text = self.text_of(r.code)
        put_bytes(out, PyBytes_AS_STRING(text), PyBytes_GET_SIZE(text))
        return 0

    cdef bytes gateway_result(self, const ResultRec* r, const PayFields* request, int64_t per_unit, bytes per_unit_text):
        """Mirror of GatewayResult(payment=answers.payment_answer(result,
        request.terminal, (), request.plan.channel, quote)).SerializeToString()
        for a plain quote: one base item of per_unit points per unit."""
        cdef Out answer
        cdef Out part
        memset(&answer, 0, sizeof(Out))
        memset(&part, 0, sizeof(Out))
        cdef int64_t base
        try:
            put_field_varint(&answer, 1, r.code)
            text = self.text_of(r.code)
            put_field_bytes(&answer, 2, PyBytes_AS_STRING(text), PyBytes_GET_SIZE(text), False)
            put_field_varint(&answer, 3, r.txn_id)
            put_field_varint(&answer, 4, <uint64_t>r.amount)
            put_field_varint(&part, 1, <uint64_t>r.fleet)
            put_field_varint(&part, 2, <uint64_t>r.personal)
            put_field_varint(&part, 3, <uint64_t>r.points_cash)
            put_field_varint(&part, 4, <uint64_t>r.points_used)
            put_field_varint(&part, 5, <uint64_t>r.channel_amount)
            put_field_varint(&part, 6, <uint64_t>request.channel if r.channel_amount else 0)
            put_field_bytes(&answer, 5, part.data, part.size, True)
            put_field_varint(&answer, 6, <uint64_t>r.points_earned)
            put_field_varint(&answer, 7, <uint64_t>r.points_clawed_back)
            part.size = 0
            put_field_varint(&part, 1, <uint64_t>r.fleet_balance)
            put_field_varint(&part, 2, <uint64_t>r.personal_balance)
            put_field_varint(&part, 3, <uint64_t>r.points_balance)
            put_field_bytes(&answer, 8, part.data, part.size, True)
            part.size = 0
            self.put_receipt(&part, r, request)
            put_field_bytes(&answer, 9, part.data, part.size, False)
            put_field_varint(&answer, 10, r.business_day)
            if r.code == APPROVED and r.card_id:
                base = request.amount_minor * per_unit // 100
                put_points_item(&answer, b"base", per_unit_text, base)
                if r.points_cash > 0 and base != r.points_earned:
                    put_points_item(&answer, b"paid_with_points", b"no points on what points paid", r.points_earned - base)
            put_field_varint(&answer, 12, <uint64_t>r.shortfall_settled)
            put_field_bytes(&answer, 17, PyBytes_AS_STRING(self.currency), PyBytes_GET_SIZE(self.currency), False)
            put_field_varint(&answer, 18, 1 if r.final & RESULT_REPLAYED else 0)
            part.size = 0
            put_field_bytes(&part, 1, answer.data, answer.size, True)
            return PyBytes_FromStringAndSize(part.data, part.size)
        finally:
            free(answer.data)
            free(part.data)


cdef bytes without_tag(bytes field):
    """A length-delimited field's content: its tag and length dropped."""
    cdef Py_ssize_t position = 1
    cdef uint64_t length
    read_varint(<const uint8_t*>PyBytes_AS_STRING(field), PyBytes_GET_SIZE(field), &position, &length)
    return field[position:]


cdef int put_points_item(Out* answer, bytes rule, bytes description, int64_t points) except -1:
    cdef Out item
    memset(&item, 0, sizeof(Out))
    try:
        put_field_bytes(&item, 1, PyBytes_AS_STRING(rule), PyBytes_GET_SIZE(rule), False)
        put_field_bytes(&item, 2, PyBytes_AS_STRING(description), PyBytes_GET_SIZE(description), False)
        put_field_varint(&item, 3, <uint64_t>points)
        put_field_bytes(answer, 11, item.data, item.size, True)
    finally:
        free(item.data)
    return 0


cdef inline bint shows_balances(const ResultRec* r) noexcept:
    """Mirror of answers.shows_balances."""
    if not r.card_id:
        return False
    if r.code == APPROVED:
        return True
    return (r.kind == KIND_PAY or r.kind == KIND_PREAUTH) and r.code != CARD_NOT_FOUND and r.code != PENDING


# ------------------------------------------------------------ a message

cdef class PayMessage:
    """One GatewayMessage of Pays, read from its wire bytes.

    PayMessage.read(raw) is None unless the message is a correlation id and
    operations that are all Pays (any other message goes the reference way
    whole). Each Pay is then `plain` (this module does it) or not (the
    reference does it: request(index) gives its bytes to parse).
    """

    cdef readonly bytes raw
    cdef readonly uint64_t correlation_id
    cdef readonly Py_ssize_t count
    cdef PayFields* fields
    cdef uint8_t* parsed

    def __dealloc__(self):
        free(self.fields)
        free(self.parsed)

    @staticmethod
    def single(bytes raw):
        """One PayRequest's wire bytes (a unary Pay's), as a message of one."""
        message = PayMessage()
        message.raw = raw
        message.correlation_id = 0
        message.count = 1
        message.fields = <PayFields*>malloc(sizeof(PayFields))
        message.parsed = <uint8_t*>malloc(1)
        if message.fields == NULL or message.parsed == NULL:
            raise MemoryError()
        message.parsed[0] = read_request(<const uint8_t*>PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw), 0, &message.fields[0])
        message.fields[0].offset = 0
        message.fields[0].length = PyBytes_GET_SIZE(raw)
        if message.parsed[0] == PARSED_PLAIN and not plainly_valid(&message.fields[0]):
            message.parsed[0] = PARSED_OTHER
        return message

    @staticmethod
    def read(bytes raw):
        """The message, or None if it is not all Pays (or does not read as protobuf writes it)."""
        cdef const uint8_t* data = <const uint8_t*>PyBytes_AS_STRING(raw)
        cdef Py_ssize_t end = PyBytes_GET_SIZE(raw)
        cdef Py_ssize_t position = 0
        cdef Py_ssize_t stop, inner_stop, count = 0
        cdef uint32_t field, inner_field
        cdef int wire, inner_wire
        cdef uint64_t correlation_id = 0
        cdef list spans = []
        while position < end:
            if not read_tag(data, end, &position, 0, &field, &wire):
                return None
            if field == 1 and wire == WIRE_VARINT and count == 0 and correlation_id == 0:
                if not read_varint(data, end, &position, &correlation_id):
                    return None
            elif field == 2 and wire == WIRE_LENGTH:
                if not read_length(data, end, &position, &stop):
                    return None
                # A GatewayOperation holding one `pay` (field 1) and nothing else.
                if not read_tag(data, stop, &position, 0, &inner_field, &inner_wire) or inner_field != 1 or inner_wire != WIRE_LENGTH:
                    return None
                if not read_length(data, stop, &position, &inner_stop) or inner_stop != stop:
                    return None
                spans.append((position, stop))
                position = stop
                count += 1
            else:
                return None
        message = PayMessage()
        message.raw = raw
        message.correlation_id = correlation_id
        message.count = count
        message.fields = <PayFields*>malloc(max(1, count) * sizeof(PayFields))
        message.parsed = <uint8_t*>malloc(max(1, count))
        if message.fields == NULL or message.parsed == NULL:
            raise MemoryError()
        cdef Py_ssize_t index = 0
        for start, finish in spans:
            message.parsed[index] = read_request(data, finish, start, &message.fields[index])
            message.fields[index].offset = start
            message.fields[index].length = finish - start
            if message.parsed[index] == PARSED_PLAIN and not plainly_valid(&message.fields[index]):
                message.parsed[index] = PARSED_OTHER
            index += 1
        return message

    def request(self, Py_ssize_t index) -> bytes:
        """The wire bytes of Pay number index (its PayRequest)."""
        assert 0 <= index < self.count
        return self.raw[self.fields[index].offset : self.fields[index].offset + self.fields[index].length]

    def plain(self, Py_ssize_t index) -> bool:
        assert 0 <= index < self.count
        return self.parsed[index] == PARSED_PLAIN

    def station_of(self, Py_ssize_t index) -> int:
        assert 0 <= index < self.count
        return self.fields[index].station_id

    def card_of(self, Py_ssize_t index) -> int:
        assert 0 <= index < self.count
        return self.fields[index].card_id

    def terminal_of(self, Py_ssize_t index) -> int:
        assert 0 <= index < self.count
        return self.fields[index].terminal_id

    def serial_of(self, Py_ssize_t index) -> int:
        assert 0 <= index < self.count
        return self.fields[index].serial

    def plain_stations(self) -> set:
        """The stations of the plain Pays."""
        cdef set found = set()
        cdef Py_ssize_t index
        for index in range(self.count):
            if self.parsed[index] == PARSED_PLAIN:
                found.add(self.fields[index].station_id)
        return found

    def split(self, dict settings) -> tuple:
        """(indexes of the plain Pays at a station in settings, indexes of the others)."""
        cdef list plain = []
        cdef list others = []
        cdef Py_ssize_t index
        for index in range(self.count):
            if self.parsed[index] == PARSED_PLAIN and self.fields[index].station_id in settings:
                plain.append(index)
            else:
                others.append(index)
        return plain, others

    def ops(self, list indexes, dict settings) -> bytes:
        """The Op of each Pay listed (plain ones), concatenated, as
        requests.pay_op builds it. settings: station id -> (points_per_unit,
        lot_validity_days, earn per_unit) of the plain path at that station
        (server/payline.py)."""
        cdef bytes ops = PyBytes_FromStringAndSize(NULL, len(indexes) * sizeof(OpRec))
        cdef OpRec* op = <OpRec*>PyBytes_AS_STRING(ops)
        cdef const PayFields* request
        cdef Py_ssize_t index
        cdef char kind_byte = <char>KIND_PAY
        for index in indexes:
            assert 0 <= index < self.count and self.parsed[index] == PARSED_PLAIN
            request = &self.fields[index]
            points_per_unit, lot_validity_days, per_unit = settings[request.station_id]
            memset(op, 0, sizeof(OpRec))
            op.kind = KIND_PAY
            op.channel = <uint8_t>request.channel
            op.plan_flags = (USE_FLEET if request.use_fleet else 0) | (USE_PERSONAL if request.use_personal else 0) | (USE_POINTS if request.use_points else 0)
            op.station_id = <uint32_t>request.station_id
            op.terminal_id = <uint32_t>request.terminal_id
            op.operator_id = <uint32_t>request.operator_id
            op.points_per_unit = points_per_unit
            op.lot_validity_days = lot_validity_days
            op.serial = request.serial
            op.card_id = request.card_id
            op.amount = request.amount_minor
            op.points_max = request.points_max
            op.earn_points = request.amount_minor * <int64_t>per_unit // 100
            digest = hashlib.blake2b(PyBytes_FromStringAndSize(&kind_byte, 1)
                                     + self.raw[request.offset : request.offset + request.length], digest_size=16).digest()
            memcpy(op.fingerprint, PyBytes_AS_STRING(digest), 16)
            op += 1
        return ops

    def answers(self, Answers tables, list indexes, bytes results, dict settings, bint unwrapped=False) -> list:
        """The GatewayResult bytes of each Pay listed, from its Result (the
        kernel's, in the same order); unwrapped: the PaymentAnswer's bytes
        alone (a unary Pay's answer)."""
        assert PyBytes_GET_SIZE(results) == len(indexes) * sizeof(ResultRec)
        cdef const ResultRec* r = <const ResultRec*>PyBytes_AS_STRING(results)
        cdef const PayFields* request
        cdef list found = []
        cdef Py_ssize_t index
        for index in indexes:
            request = &self.fields[index]
            if r.code == PENDING or r.business_day > DAY_MAX:
                found.append(None)  # the reference settles the channel, or writes the date
            else:
                _, _, per_unit = settings[request.station_id]
                written = tables.gateway_result(r, request, per_unit, b"%d per currency unit" % per_unit)
                found.append(without_tag(written) if unwrapped else written)
            r += 1
        return found


# ------------------------------------------------------------ replies

cdef inline Py_ssize_t varint_size(uint64_t value) noexcept:
    cdef Py_ssize_t size = 1
    while value >= 0x80:
        value >>= 7
        size += 1
    return size


cdef bytes reply_of(uint64_t correlation_id, list results, Py_ssize_t first, Py_ssize_t stop):
    """GatewayReply(correlation_id, results[first:stop], first_index=first) as protobuf writes it."""
    cdef Out out
    memset(&out, 0, sizeof(Out))
    cdef Py_ssize_t index
    try:
        put_field_varint(&out, 1, correlation_id)
        for index in range(first, stop):
            result = <bytes>results[index]
            put_field_bytes(&out, 2, PyBytes_AS_STRING(result), PyBytes_GET_SIZE(result), True)
        put_field_varint(&out, 4, first)
        return PyBytes_FromStringAndSize(out.data, out.size)
    finally:
        free(out.data)


def replies(uint64_t correlation_id, list results, Py_ssize_t reply_bytes_max) -> list:
    """Mirror of server/stream.py split_replies for results given as wire
    bytes: one reply, or consecutive parts of at most reply_bytes_max each,
    counted as split_replies counts them."""
    cdef Py_ssize_t count = len(results)
    cdef Py_ssize_t size = varint_size(correlation_id) + 1 if correlation_id else 0
    cdef Py_ssize_t index, length
    for index in range(count):
        length = PyBytes_GET_SIZE(<bytes>results[index])
        size += 1 + varint_size(length) + length
    if count == 1 or size <= reply_bytes_max:
        return [reply_of(correlation_id, results, 0, count)]
    cdef list found = []
    cdef Py_ssize_t first = 0
    size = 0
    for index in range(count):
        length = PyBytes_GET_SIZE(<bytes>results[index]) + 8  # as split_replies counts
        if index > first and size + length > reply_bytes_max:
            found.append(reply_of(correlation_id, results, first, index))
            first = index
            size = 0
        size += length
    found.append(reply_of(correlation_id, results, first, count))
    return found


# ------------------------------------------------------------ a terminal's Pay

cdef str METADATA_TERMINAL = _keys.METADATA_TERMINAL
cdef str METADATA_KEY_ID = _keys.METADATA_KEY_ID
cdef str METADATA_SERIAL = _keys.METADATA_SERIAL
cdef str METADATA_MAC = _keys.METADATA_MAC
cdef Py_ssize_t DECIMAL_DIGITS_MAX = _keys.METADATA_DECIMAL_DIGITS_MAX
# terminal id (u32), key id (u64), serial (u64), big-endian: the end of the MAC's header.
cdef Py_ssize_t MAC_FIELDS_BYTES = 20
assert _keys._MAC_FIELDS.size == MAC_FIELDS_BYTES


cdef class KeptTerminal:
    """What server/terminal_auth.py's TerminalGuard.pass_pay knows of a
    terminal whose record it read: its station, its working key's id,
    expiry and keyed MAC (keys.MacKey), and when it was read."""

    # The record as stored: compared byte for byte when it is read again.
    cdef readonly bytes record
    cdef readonly uint64_t station_id
    cdef readonly uint64_t key_id
    cdef readonly int64_t key_expires_ms
    # The guard's generation it was read in: read again in a later one.
    cdef public int64_t generation
    cdef object keyed
    cdef object finish

    def __init__(self, bytes record, uint64_t station_id, uint64_t key_id, int64_t key_expires_ms, mac_key,
                 int64_t generation):
        self.record = record
        self.station_id = station_id
        self.key_id = key_id
        self.key_expires_ms = key_expires_ms
        self.keyed = mac_key.keyed
        self.finish = mac_key.finish
        self.generation = generation


cdef object decimal_or_none(object text):
    """Mirror of server/terminal_auth.py _decimal: None where it refuses
    (not 1 to 20 ASCII digits, or 2^64 and above)."""
    cdef Py_ssize_t size, index
    cdef Py_UCS4 character
    cdef uint64_t digit
    cdef uint64_t value = 0
    if type(text) is not str:
        return None
    size = len(<str>text)
    if size == 0 or size > DECIMAL_DIGITS_MAX:
        return None
    for index in range(size):
        character = (<str>text)[index]
        if character < 48 or character > 57:  # '0' .. '9'
            return None
        digit = <uint64_t>character - 48
        if value > (0xFFFFFFFFFFFFFFFF - digit) // 10:
            return None
        value = value * 10 + digit
    return value


cdef inline void put_big_endian(char* out, uint64_t value, int size) noexcept:
    cdef int index
    for index in range(size - 1, -1, -1):
        out[index] = <char>(value & 0xFF)
        value >>= 8


def terminal_pay(metadata, bytes body, bytes mac_prefix, dict kept, int64_t now_ms, int64_t generation):
    """A unary Pay sent by a terminal under --terminal-auth, checked as
    server/terminal_auth.py's TerminalGuard.check checks it, but for the
    replay check (the kernel's own: see that module's docstring):

    - the PayMessage, when the metadata holds the four keys well-formed,
      the body is a plain Pay naming that terminal and serial at the kept
      terminal's station, its working key is the kept one and unexpired, and
      the MAC verifies;
    - the terminal id (an int), when the terminal is not kept, or is kept
      from another `generation` (TerminalGuard's: something may have
      changed since), or the request names another key id: TerminalGuard
      reads its record and asks again;
    - None otherwise: the reference check decides, and says why.

    mac_prefix: keys.mac_prefix(the RPC's path); kept: terminal id ->
    KeptTerminal. Mirror of terminal_auth.parse_metadata (a key sent twice
    counts once, its last value) and of TerminalGuard._check_context and
    keys.MacKey.matches for a Pay; tests/test_terminal_pass.py holds it to
    the reference over random metadata, bodies and terminals."""
    cdef PayMessage message
    cdef KeptTerminal terminal
    cdef bytes header
    cdef char* out
    found_terminal = key_id = serial = mac = None
    for pair in metadata:
        key = pair[0]
        if key == METADATA_TERMINAL:
            found_terminal = pair[1]
        elif key == METADATA_KEY_ID:
            key_id = pair[1]
        elif key == METADATA_SERIAL:
            serial = pair[1]
        elif key == METADATA_MAC:
            mac = pair[1]
    if found_terminal is None or key_id is None or serial is None or mac is None or type(mac) is not str:
        return None
    found_terminal, key_id, serial = decimal_or_none(found_terminal), decimal_or_none(key_id), decimal_or_none(serial)
    if found_terminal is None or key_id is None or serial is None:
        return None
    try:
        mac = bytes.fromhex(mac)
    except ValueError:
        return None
    message = PayMessage.single(body)
    cdef const PayFields* fields = &message.fields[0]
    if message.parsed[0] != PARSED_PLAIN or not fields.has_terminal:
        return None
    if fields.terminal_id != found_terminal or fields.serial != serial:
        return None
    terminal = kept.get(found_terminal)
    if terminal is None or terminal.generation != generation or terminal.key_id != key_id:
        return found_terminal
    if terminal.key_expires_ms <= now_ms or fields.station_id != terminal.station_id:
        return None
    header = PyBytes_FromStringAndSize(NULL, PyBytes_GET_SIZE(mac_prefix) + MAC_FIELDS_BYTES)
    out = PyBytes_AS_STRING(header)
    memcpy(out, PyBytes_AS_STRING(mac_prefix), PyBytes_GET_SIZE(mac_prefix))
    out += PyBytes_GET_SIZE(mac_prefix)
    put_big_endian(out, fields.terminal_id, 4)
    put_big_endian(out + 4, terminal.key_id, 8)
    put_big_endian(out + 12, fields.serial, 8)
    state = terminal.keyed.copy()
    state.update(header)
    state.update(body)
    if not compare_digest(terminal.finish(state), mac):
        return None
    return message
