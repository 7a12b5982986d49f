"""What several pages share: the organisations a user may pick, enum
choices, and building a form's spec from fields."""

import time

from server.console.api import ApiError
from server.console.sessions import CHOICES_LIFETIME_S
from server.console.web import Ctx
from tally.v1 import admin_pb2, card_pb2, common_pb2, loyalty_pb2

TIERS = tuple((int(value), name.title()) for name, value in loyalty_pb2.CustomerTier.items())
CARD_TYPES = ((card_pb2.COMPANY, "Fleet (company)"), (card_pb2.PERSONAL_CARD, "Personal"))
CHANNELS = ((common_pb2.BANK_CARD, "BANK_CARD"), (common_pb2.WECHAT_PAY, "WECHAT_PAY"), (common_pb2.ALIPAY, "ALIPAY"))
ORG_KINDS = {admin_pb2.ORGANISATION_KIND_HEADQUARTERS: "Headquarters", admin_pb2.ORGANISATION_KIND_REGION: "Region",
             admin_pb2.ORGANISATION_KIND_STATION: "Station"}
ROLES = tuple((value, name.removeprefix("ROLE_").replace("_", " ").title()) for name, value in admin_pb2.Role.items()
              if value)
REASON_HELP = "1 .. 200 characters, kept in the audit log"


async def organisations(ctx: Ctx, kind: int = 0) -> list:
    """The organisations of the user's subtree (of one kind), or none if the
    API refuses (the pages then show what they can). Kept in the session for
    CHOICES_LIFETIME_S: forms offer them as choices, and the API checks
    whatever is chosen when the form is sent."""
    key = ("organisations", kind)
    cached = ctx.session.cache.get(key)
    if cached is not None and cached[0] > time.monotonic():
        return cached[1]
    try:
        answer = await ctx.call("admin", "ListOrganisations", admin_pb2.ListOrganisationsRequest(kind=kind))
    except ApiError:
        return []
    found = list(answer.organisations)
    ctx.session.cache[key] = (time.monotonic() + CHOICES_LIFETIME_S, found)
    return found


def org_choices(orgs) -> tuple:
    return tuple((org.org_id, f"{org.org_id} · {org.name}") for org in orgs)


def tier_name(tier: int) -> str:
    return loyalty_pb2.CustomerTier.Name(tier).title()
