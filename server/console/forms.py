"""Forms: what each form asks, reading what was typed, errors beside fields.

Owns: Field (one input, named by the API request field it fills, so that an
INVALID_ARGUMENT naming that field lands beside it), FormSpec (a form: its
action, fields, button), Form (a form as shown: values typed, errors, a
fresh nonce), and `read`, which turns the submitted text into typed values
(integers, amounts in minor units by integer arithmetic, days, moments) or
field errors, before any RPC is made.
Used by: the pages (server/console/pages/) and the `form` macro
(templates/macros.html).

The console checks only that input has the right shape (a number, a date);
every rule about values (ranges, contradictions, permissions) is the API's,
and its refusal is shown beside the field it names.
"""

import re

import msgspec

from server.console import i18n
from server.console.sessions import new_nonce

KINDS = ("text", "password", "int", "amount", "select", "checkbox", "checkboxes", "date", "moment", "textarea", "file",
         "codes", "ids", "hidden")
TEXT_LENGTH_MAX = 100_000
_INT = re.compile(r"-?\d{1,20}\Z")
_SPLIT = re.compile(r"[\s,;，；]+")


class Field(msgspec.Struct, frozen=True):
    """name: the request field (dotted path) it fills; label: English text."""

    name: str
    label: str
    kind: str = "text"
    required: bool = False
    # (value, English label) pairs of a select or checkboxes.
    options: tuple = ()
    help: str = ""

    def __post_init__(self):
        assert self.kind in KINDS, self.kind


class FormSpec(msgspec.Struct, frozen=True):
    form_id: str
    action: str
    submit: str
    fields: tuple[Field, ...]
    # A button that changes something for good asks the browser to confirm
    # nothing (no scripts): it is styled as a warning instead.
    danger: bool = False
    multipart: bool = False


class Form:
    """A form as shown: raw values (text as typed, or initial), errors by
    field name, an error for the whole form, a nonce for once-only submit."""

    def __init__(self, spec: FormSpec, values: dict | None = None, errors: dict | None = None, general: str = ""):
        self.spec = spec
        self.values = {name: value for name, value in (values or {}).items()}
        self.errors = dict(errors or {})
        self.general = general
        self.nonce = new_nonce()

    def value(self, name: str):
        return self.values.get(name, "")

    def checked(self, name: str, option: str = "on") -> bool:
        value = self.values.get(name)
        if isinstance(value, (list, tuple, set, frozenset)):
            return option in {str(item) for item in value}
        return value in (True, "on", option)

    def refuse(self, field: str, text: str):
        """Put an API refusal beside its field, or on the form if it names
        none of this form's fields (the longest field name it starts with wins:
        "promotion.lottery.prizes[0].name" lands on that field)."""
        names = [field_spec.name for field_spec in self.spec.fields if field_spec.kind != "hidden"]
        match = max((name for name in names if field == name or field.startswith(name + ".") or field.startswith(name + "[")),
                    key=len, default=None)
        if match is None:
            self.general = text if not field or field in text else f"{field}: {text}"
        elif field != match and field not in text:
            # Inside the field (a key of the rules' JSON): say where.
            self.errors[match] = f"{field[len(match):].lstrip('.')}: {text}"
        else:
            self.errors[match] = text


class Read(msgspec.Struct):
    values: dict
    errors: dict


def read(spec: FormSpec, data, currency: str, utc_offset_minutes: int) -> Read:
    """Typed values of the submitted form `data` (a starlette FormData), or
    errors by field name: what is wrong with the shape of each input."""
    values, errors = {}, {}
    for field in spec.fields:
        if field.kind == "checkboxes":
            values[field.name] = [str(item) for item in data.getlist(field.name)]
            continue
        if field.kind == "checkbox":
            values[field.name] = data.get(field.name) == "on"
            continue
        raw = data.get(field.name)
        if field.kind == "file":
            values[field.name] = raw if raw is not None and hasattr(raw, "read") and raw.filename else None
            if field.required and values[field.name] is None:
                errors[field.name] = "required: choose a file"
            continue
        text = raw if isinstance(raw, str) else ""
        if len(text) > TEXT_LENGTH_MAX:
            errors[field.name] = f"at most {TEXT_LENGTH_MAX:,} characters"
            continue
        if field.kind != "password":
            text = text.strip()
        if not text:
            if field.required:
                errors[field.name] = "required"
            values[field.name] = _empty(field.kind)
            continue
        try:
            values[field.name] = _parse(field, text, currency, utc_offset_minutes)
        except ValueError as error:
            errors[field.name] = str(error)
    return Read(values, errors)


def _empty(kind: str):
    return {"int": 0, "amount": 0, "date": 0, "moment": 0, "codes": [], "ids": []}.get(kind, "")


def _parse(field: Field, text: str, currency: str, utc_offset_minutes: int):
    if field.kind == "int":
        return parse_int(text)
    if field.kind == "amount":
        return i18n.parse_amount(text, currency)
    if field.kind == "date":
        return i18n.parse_day(text)
    if field.kind == "moment":
        return i18n.parse_local_moment(text, utc_offset_minutes)
    if field.kind == "codes":
        return [code for code in _SPLIT.split(text) if code]
    if field.kind == "ids":
        return [parse_int(item) for item in _SPLIT.split(text) if item]
    if field.kind == "select" and text not in {str(value) for value, _ in field.options}:
        raise ValueError("choose one of the list")
    return text


def parse_int(text: str) -> int:
    if not _INT.match(text.strip()):
        raise ValueError("a whole number such as 42")
    return int(text)


def raw_values(spec: FormSpec, data) -> dict:
    """What was typed, to show it again beside the errors (never passwords
    or files)."""
    values = {}
    for field in spec.fields:
        if field.kind in ("password", "file"):
            continue
        if field.kind == "checkboxes":
            values[field.name] = data.getlist(field.name)
        elif field.kind == "checkbox":
            values[field.name] = data.get(field.name) == "on"
        else:
            value = data.get(field.name)
            values[field.name] = value if isinstance(value, str) else ""
    return values
