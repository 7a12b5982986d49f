"""Customers: find by name or id, create, the profile and its cards, the
data export (one JSON file of everything held on the person) and erasure
on request.

Personal fields are read and changed only through AdminService (its roles:
administrators and customer service; erasure: administrators), which
audits each access without writing the personal values into the log. An
export's file is not kept to answer a repeated submission: that one is told
to export again.
"""

from starlette.responses import Response

from server.console.forms import Field, FormSpec
from server.console.pages.common import org_choices, organisations, tier_name
from server.console.web import Ctx, page, route, submit
from tally.v1 import admin_pb2, card_pb2

SEARCHED_CUSTOMERS_MAX = 10_000
LISTED_CUSTOMERS = 100
PROFILE_FIELDS = (
    Field("profile.name", "Name"),
    Field("profile.phone", "Phone"),
    Field("profile.email", "E-mail"),
    Field("profile.address", "Address"),
    Field("profile.birth_date", "Birth date", help="YYYY-MM-DD"),
)


async def create_spec(ctx: Ctx) -> FormSpec:
    orgs = await organisations(ctx)
    return FormSpec("create", "/customers/create", "Create the customer", (
        Field("org_id", "Organisation", "select", options=org_choices(orgs)),
        Field("customer_id", "Customer id", "int", help="0: the next free one"),
        *PROFILE_FIELDS))


def customer_specs(customer_id: int) -> dict[str, FormSpec]:
    base = f"/customers/{customer_id}"
    return {
        "profile": FormSpec("profile", base + "/update", "Save the profile", PROFILE_FIELDS),
        "export": FormSpec("export", base + "/export", "Export the customer's data", ()),
        "erase": FormSpec("erase", base + "/erase", "Erase the personal data", (
            Field("reason", "Request reference", required=True, help="a ticket number: no personal data"),), danger=True),
    }


def profile_of(values: dict) -> admin_pb2.CustomerProfile:
    return admin_pb2.CustomerProfile(**{name.removeprefix("profile."): values[name] for name in values
                                        if name.startswith("profile.")})


def matches(customer, query: str) -> bool:
    profile = customer.profile
    needle = query.casefold()
    return any(needle in text.casefold() for text in (profile.name, profile.phone, profile.email))


async def customers_page(ctx: Ctx, failed=None):
    query = ctx.request.query_params.get("q", "").strip()
    if query.isdigit():
        return ctx.redirect(f"/customers/{int(query)}")
    limit = SEARCHED_CUSTOMERS_MAX if query else LISTED_CUSTOMERS
    listed, refusal = await ctx.maybe("admin", "ListCustomers", admin_pb2.ListCustomersRequest(limit=limit))
    customers = [customer for customer in listed.customers if not query or matches(customer, query)] if listed else []
    create = failed or ctx.form(await create_spec(ctx))
    return ctx.render("customers.html", customers=customers[:LISTED_CUSTOMERS], listed=listed, refusal=refusal,
                      query=query, create=create, tier_name=tier_name)


async def create_customer(ctx: Ctx, values: dict, nonce: str):
    customer = await ctx.call("admin", "CreateCustomer", admin_pb2.CreateCustomerRequest(
        org_id=int(values["org_id"] or 0), customer_id=values["customer_id"], profile=profile_of(values)))
    ctx.flash("good", ctx.t("Customer created."))
    return ctx.redirect(f"/customers/{customer.customer_id}")


async def customer_page(ctx: Ctx, customer_id: int, failed=None):
    customer = await ctx.call("admin", "GetCustomer", admin_pb2.GetCustomerRequest(customer_id=customer_id))
    cards, cards_refusal = await ctx.maybe("admin", "ListCardRecords", admin_pb2.ListCardRecordsRequest(
        customer_id=customer_id))
    forms = {name: ctx.form(spec) for name, spec in customer_specs(customer_id).items()}
    forms["profile"].values = {f"profile.{name}": getattr(customer.profile, name)
                              for name in ("name", "phone", "email", "address", "birth_date")}
    if failed is not None:
        forms[failed.spec.form_id] = failed
    exported_again = ctx.request.query_params.get("exported") == "again"
    return ctx.render("customer.html", customer=customer, cards=cards, cards_refusal=cards_refusal, forms=forms,
                      exported_again=exported_again,
                      tier_name=tier_name, status_name=card_pb2.CardStatus.Name, type_name=card_pb2.CardType.Name)


async def update_customer(ctx: Ctx, values: dict, nonce: str, customer_id: int):
    await ctx.call("admin", "UpdateCustomer", admin_pb2.UpdateCustomerRequest(customer_id=customer_id,
                                                                              profile=profile_of(values)))
    ctx.flash("good", ctx.t("Profile saved."))
    return ctx.redirect(f"/customers/{customer_id}")


async def export_customer(ctx: Ctx, values: dict, nonce: str, customer_id: int):
    chunks = await ctx.stream("admin", "ExportCustomer", admin_pb2.ExportCustomerRequest(customer_id=customer_id))
    document = b"".join(chunk.data for chunk in chunks)
    exported = Response(document, media_type="application/json", headers={
        "content-disposition": f'attachment; filename="customer-{customer_id}.json"'})
    return exported, ctx.redirect(f"/customers/{customer_id}?exported=again")


async def erase_customer(ctx: Ctx, values: dict, nonce: str, customer_id: int):
    await ctx.call("admin", "EraseCustomer", admin_pb2.EraseCustomerRequest(customer_id=customer_id,
                                                                            reason=values["reason"]))
    ctx.flash("good", ctx.t("Personal data erased; the cards and their books stay."))
    return ctx.redirect(f"/customers/{customer_id}")


async def customer_again(ctx: Ctx, form, customer_id: int):
    return await customer_page(ctx, customer_id, failed=form)


async def customers_again(ctx: Ctx, form):
    return await customers_page(ctx, failed=form)


def customer_spec_of(name: str):
    return lambda ctx, customer_id: customer_specs(customer_id)[name]


ROUTES = [
    route("/customers", page(customers_page)),
    route("/customers/create", submit(create_spec, create_customer, customers_again), methods=("POST",)),
    route("/customers/{customer_id:int}", page(customer_page)),
    route("/customers/{customer_id:int}/update", submit(customer_spec_of("profile"), update_customer, customer_again),
          methods=("POST",)),
    route("/customers/{customer_id:int}/export", submit(customer_spec_of("export"), export_customer, customer_again),
          methods=("POST",)),
    route("/customers/{customer_id:int}/erase", submit(customer_spec_of("erase"), erase_customer, customer_again),
          methods=("POST",)),
]
