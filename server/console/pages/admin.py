"""Administration: the organisation tree, terminals (a registration shows
the terminal's secret key this once), operators, users and roles (create,
role, enable, unlock, password), the domain's parameters, and the audit log
with its chain check.

A registration's answer holds the secret key: a repeated submission of its
form is told it was registered already and never sees the key again.
"""

import grpc

from server.console.api import ApiError
from server.console.forms import Field, FormSpec
from server.console.pages.common import ORG_KINDS, REASON_HELP, ROLES, org_choices, organisations
from server.console.sessions import now_ms
from server.console.web import Ctx, page, route, submit
from tally.v1 import admin_pb2

AUDIT_PAGE = 100
AUDIT_READ_LIMIT = 10_000
AUDIT_READS_MAX = 20
SUBPAGES = (("/admin", "Organisations"), ("/admin/terminals", "Terminals"), ("/admin/operators", "Operators"),
            ("/admin/users", "Users and roles"), ("/admin/parameters", "Parameters"), ("/admin/audit", "Audit log"))
KEY_ALGORITHMS = ((admin_pb2.TERMINAL_KEY_ALGORITHM_AES_HMAC_SHA256, "AES / HMAC-SHA256"),
                  (admin_pb2.TERMINAL_KEY_ALGORITHM_SM4_CMAC, "SM4 / CMAC-SM4"))
PARAMETERS = (("token_validity_s", "Login token lifetime, seconds"), ("working_key_validity_s", "Working key lifetime, seconds"),
              ("login_failures_max", "Wrong passwords before a lockout"), ("login_lockout_s", "Lockout, seconds"))


async def org_spec(ctx: Ctx) -> FormSpec:
    orgs = await organisations(ctx)
    return FormSpec("organisation", "/admin/organisation", "Create", (
        Field("parent_id", "Under", "select", options=org_choices(orgs)),
        Field("kind", "Kind", "select", options=((admin_pb2.ORGANISATION_KIND_STATION, "Station"),
                                                 (admin_pb2.ORGANISATION_KIND_REGION, "Region"))),
        Field("name", "Name", required=True),
        Field("address", "Address"),
        Field("org_id", "Id", "int", help="a station's id is its terminals' station_id; 0: the next free one")))


async def terminal_spec(ctx: Ctx) -> FormSpec:
    stations = await organisations(ctx, admin_pb2.ORGANISATION_KIND_STATION)
    return FormSpec("terminal", "/admin/terminal", "Register", (
        Field("terminal_id", "Terminal id", "int", required=True),
        Field("station_id", "Station", "select", options=org_choices(stations)),
        Field("name", "Name"),
        Field("key_algorithm", "Key suite", "select", options=KEY_ALGORITHMS)))


async def operator_spec(ctx: Ctx) -> FormSpec:
    orgs = await organisations(ctx)
    return FormSpec("operator", "/admin/operator", "Save the operator", (
        Field("operator.operator_id", "Operator id", "int", required=True),
        Field("operator.org_id", "Organisation", "select", options=org_choices(orgs)),
        Field("operator.name", "Name", required=True),
        Field("operator.enabled", "Enabled", "checkbox")))


async def user_spec(ctx: Ctx) -> FormSpec:
    orgs = await organisations(ctx)
    return FormSpec("user", "/admin/user", "Create the user", (
        Field("username", "Username", required=True),
        Field("password", "Password", "password", required=True, help="12 .. 256 characters"),
        Field("org_id", "Organisation", "select", options=org_choices(orgs)),
        Field("role", "Role", "select", options=ROLES)))


def user_specs(username: str) -> dict[str, FormSpec]:
    hidden = Field("username", "Username", "hidden")
    return {
        "role": FormSpec(f"role-{username}", "/admin/user/role", "Change", (
            hidden, Field("role", "Role", "select", options=ROLES), Field("enabled", "Enabled", "checkbox"))),
        "unlock": FormSpec(f"unlock-{username}", "/admin/user/unlock", "Unlock", (
            hidden, Field("reason", "Reason", required=True, help=REASON_HELP))),
        "password": FormSpec(f"password-{username}", "/admin/user/password", "Set the password", (
            hidden, Field("new_password", "New password", "password", required=True))),
    }


PARAMETERS_SPEC = FormSpec("parameters", "/admin/parameters", "Save the parameters",
                           tuple(Field(name, label, "int", required=True) for name, label in PARAMETERS))
VERIFY_SPEC = FormSpec("verify", "/admin/audit/verify", "Check the chain", ())


def render(ctx: Ctx, template: str, **context):
    return ctx.render(template, subpages=SUBPAGES, kind_name=lambda kind: ORG_KINDS.get(kind, "?"), **context)


# ---------------------------------------------------------------- organisations


def tree_of(orgs) -> list:
    """(org, depth) in tree order: each organisation after its parent."""
    children: dict[int, list] = {}
    ids = {org.org_id for org in orgs}
    for org in orgs:
        children.setdefault(org.parent_id if org.parent_id in ids else 0, []).append(org)
    ordered = []

    def walk(parent_id: int, depth: int):
        for org in sorted(children.get(parent_id, ()), key=lambda org: org.org_id):
            ordered.append((org, depth))
            walk(org.org_id, depth + 1)

    walk(0, 0)
    return ordered


async def organisations_page(ctx: Ctx, failed=None):
    ctx.session.cache.clear()  # the tree as it is now
    orgs = await organisations(ctx)
    form = failed or ctx.form(await org_spec(ctx), {"parent_id": ctx.user.org_id})
    return render(ctx, "admin_orgs.html", tree=tree_of(orgs), form=form)


async def create_organisation(ctx: Ctx, values: dict, nonce: str):
    org = await ctx.call("admin", "CreateOrganisation", admin_pb2.CreateOrganisationRequest(
        parent_id=int(values["parent_id"] or 0), kind=int(values["kind"]), name=values["name"],
        address=values["address"], org_id=values["org_id"]))
    ctx.session.cache.clear()  # the tree and every choice of organisation changed
    ctx.flash("good", f"{ctx.t('Created')}: {org.org_id} {org.name}")
    return ctx.redirect("/admin")


# ---------------------------------------------------------------- terminals


async def terminals_page(ctx: Ctx, failed=None, secret=None):
    listed = await ctx.call("admin", "ListTerminals", admin_pb2.ListTerminalsRequest())
    form = failed or ctx.form(await terminal_spec(ctx))
    toggles = {}
    for terminal in listed.terminals:
        if terminal.status == admin_pb2.TERMINAL_STATUS_ACTIVE:
            spec = FormSpec(f"disable-{terminal.terminal_id}", "/admin/terminal/disable", "Disable", (
                Field("terminal_id", "Terminal", "hidden"), Field("reason", "Reason", required=True)), danger=True)
        else:
            spec = FormSpec(f"enable-{terminal.terminal_id}", "/admin/terminal/enable", "Enable", (
                Field("terminal_id", "Terminal", "hidden"),))
        toggles[terminal.terminal_id] = ctx.form(spec, {"terminal_id": terminal.terminal_id})
    if failed is not None and failed.spec.form_id.split("-")[0] in ("disable", "enable"):
        toggles[int(failed.value("terminal_id"))] = failed
        form = ctx.form(await terminal_spec(ctx))
    registered = ctx.request.query_params.get("registered", "")
    return render(ctx, "admin_terminals.html", listed=listed, form=form, toggles=toggles, secret=secret,
                  registered=registered if registered.isdigit() else "",
                  status_name=admin_pb2.TerminalStatus.Name, algorithm_name=admin_pb2.TerminalKeyAlgorithm.Name)


async def register_terminal(ctx: Ctx, values: dict, nonce: str):
    answer = await ctx.call("admin", "RegisterTerminal", admin_pb2.RegisterTerminalRequest(
        terminal_id=values["terminal_id"], station_id=int(values["station_id"] or 0), name=values["name"],
        key_algorithm=int(values["key_algorithm"])))
    shown = await terminals_page(ctx, secret=(answer.terminal, answer.secret_key.hex()))
    return shown, ctx.redirect(f"/admin/terminals?registered={answer.terminal.terminal_id}")


async def disable_terminal(ctx: Ctx, values: dict, nonce: str):
    await ctx.call("admin", "DisableTerminal", admin_pb2.DisableTerminalRequest(
        terminal_id=int(values["terminal_id"]), reason=values["reason"]))
    ctx.flash("good", f"{ctx.t('Terminal disabled')}: {values['terminal_id']}")
    return ctx.redirect("/admin/terminals")


async def enable_terminal(ctx: Ctx, values: dict, nonce: str):
    await ctx.call("admin", "EnableTerminal", admin_pb2.EnableTerminalRequest(terminal_id=int(values["terminal_id"])))
    ctx.flash("good", f"{ctx.t('Terminal enabled')}: {values['terminal_id']}")
    return ctx.redirect("/admin/terminals")


# ---------------------------------------------------------------- operators


async def operators_page(ctx: Ctx, failed=None):
    listed = await ctx.call("admin", "ListOperators", admin_pb2.ListOperatorsRequest())
    form = failed or ctx.form(await operator_spec(ctx), {"operator.enabled": True})
    return render(ctx, "admin_operators.html", listed=listed, form=form)


async def set_operator(ctx: Ctx, values: dict, nonce: str):
    operator = admin_pb2.Operator(operator_id=values["operator.operator_id"], org_id=int(values["operator.org_id"] or 0),
                                  name=values["operator.name"], enabled=values["operator.enabled"])
    await ctx.call("admin", "SetOperator", admin_pb2.SetOperatorRequest(operator=operator))
    ctx.flash("good", f"{ctx.t('Operator saved')}: {operator.operator_id}")
    return ctx.redirect("/admin/operators")


# ---------------------------------------------------------------- users


async def users_page(ctx: Ctx, failed=None):
    listed = await ctx.call("admin", "ListUsers", admin_pb2.ListUsersRequest())
    create = ctx.form(await user_spec(ctx), {"org_id": ctx.user.org_id})
    rows = {}
    for user in listed.users:
        specs = user_specs(user.username)
        rows[user.username] = {
            "role": ctx.form(specs["role"], {"username": user.username, "role": user.role, "enabled": user.enabled}),
            "unlock": ctx.form(specs["unlock"], {"username": user.username}),
            "password": ctx.form(specs["password"], {"username": user.username})}
    if failed is not None:
        if failed.spec.form_id == "user":
            create = failed
        else:
            kind, username = failed.spec.form_id.split("-", 1)
            rows.setdefault(username, {})[kind] = failed
    return render(ctx, "admin_users.html", listed=listed, create=create, rows=rows, now_ms=now_ms(),
                  role_name=lambda role: admin_pb2.Role.Name(role).removeprefix("ROLE_").replace("_", " ").title())


async def create_user(ctx: Ctx, values: dict, nonce: str):
    user = await ctx.call("admin", "CreateUser", admin_pb2.CreateUserRequest(
        username=values["username"], password=values["password"], org_id=int(values["org_id"] or 0),
        role=int(values["role"])))
    ctx.flash("good", f"{ctx.t('User created')}: {user.username}")
    return ctx.redirect("/admin/users")


def user_spec_of(kind: str):
    async def spec_of(ctx: Ctx):
        data = await ctx.request.form()
        return user_specs(str(data.get("username", "")))[kind]

    return spec_of


async def change_role(ctx: Ctx, values: dict, nonce: str):
    await ctx.call("admin", "UpdateUser", admin_pb2.UpdateUserRequest(
        username=values["username"], role=int(values["role"]), enabled=values["enabled"]))
    ctx.flash("good", f"{ctx.t('User changed')}: {values['username']}")
    return ctx.redirect("/admin/users")


async def unlock_user(ctx: Ctx, values: dict, nonce: str):
    await ctx.call("admin", "UnlockUser", admin_pb2.UnlockUserRequest(username=values["username"],
                                                                      reason=values["reason"]))
    ctx.flash("good", f"{ctx.t('User unlocked')}: {values['username']}")
    return ctx.redirect("/admin/users")


async def set_password(ctx: Ctx, values: dict, nonce: str):
    await ctx.call("admin", "SetPassword", admin_pb2.SetPasswordRequest(username=values["username"],
                                                                        new_password=values["new_password"]))
    ctx.flash("good", f"{ctx.t('Password set')}: {values['username']}")
    return ctx.redirect("/admin/users")


# ---------------------------------------------------------------- parameters, audit


async def parameters_page(ctx: Ctx, failed=None):
    parameters = await ctx.call("admin", "GetParameters", admin_pb2.GetParametersRequest())
    form = failed or ctx.form(PARAMETERS_SPEC, {name: getattr(parameters, name) for name, _ in PARAMETERS})
    return render(ctx, "admin_parameters.html", parameters=parameters, form=form, names=PARAMETERS)


async def set_parameters(ctx: Ctx, values: dict, nonce: str):
    await ctx.call("admin", "SetParameters", admin_pb2.SetParametersRequest(**values))
    ctx.flash("good", ctx.t("Parameters saved."))
    return ctx.redirect("/admin/parameters")


async def newest_audit_entries(ctx: Ctx) -> list:
    """The newest AUDIT_PAGE entries of the user's subtree, newest first
    (the API reads oldest first: pages of AUDIT_READ_LIMIT, at most
    AUDIT_READS_MAX of them)."""
    kept, after = [], 0
    for _ in range(AUDIT_READS_MAX):
        listed = await ctx.call("admin", "ReadAudit", admin_pb2.ReadAuditRequest(after_seq=after, limit=AUDIT_READ_LIMIT))
        kept = (kept + list(listed.entries))[-AUDIT_PAGE:]
        if not listed.truncated or not listed.entries:
            break
        after = listed.entries[-1].seq
    return kept[::-1]


async def audit_page(ctx: Ctx, verified=None):
    after = ctx.request.query_params.get("after", "")
    entries, more, refusal = [], False, None
    try:
        if after.isdigit():
            listed = await ctx.call("admin", "ReadAudit", admin_pb2.ReadAuditRequest(after_seq=int(after), limit=AUDIT_PAGE))
            entries, more = list(listed.entries), listed.truncated
        else:
            entries = await newest_audit_entries(ctx)
    except ApiError as error:
        if error.code != grpc.StatusCode.PERMISSION_DENIED:
            raise
        refusal = error
    return render(ctx, "admin_audit.html", entries=entries, more=more, oldest_first=after.isdigit(),
                  verify=ctx.form(VERIFY_SPEC), verified=verified, refusal=refusal)


async def verify_audit(ctx: Ctx, values: dict, nonce: str):
    verified = await ctx.call("admin", "VerifyAudit", admin_pb2.VerifyAuditRequest())
    return await audit_page(ctx, verified=verified)


def again(page_function):
    async def show(ctx: Ctx, form):
        return await page_function(ctx, failed=form)

    return show


def toggle_spec(kind: str):
    fields = (Field("terminal_id", "Terminal", "int", required=True),)
    if kind == "disable":
        fields += (Field("reason", "Reason", required=True),)

    async def spec_of(ctx: Ctx):
        data = await ctx.request.form()
        return FormSpec(f"{kind}-{data.get('terminal_id', '')}", f"/admin/terminal/{kind}", kind, fields)

    return spec_of


ROUTES = [
    route("/admin", page(organisations_page)),
    route("/admin/organisation", submit(org_spec, create_organisation, again(organisations_page)), methods=("POST",)),
    route("/admin/terminals", page(terminals_page)),
    route("/admin/terminal", submit(terminal_spec, register_terminal, again(terminals_page)), methods=("POST",)),
    route("/admin/terminal/disable", submit(toggle_spec("disable"), disable_terminal, again(terminals_page)),
          methods=("POST",)),
    route("/admin/terminal/enable", submit(toggle_spec("enable"), enable_terminal, again(terminals_page)),
          methods=("POST",)),
    route("/admin/operators", page(operators_page)),
    route("/admin/operator", submit(operator_spec, set_operator, again(operators_page)), methods=("POST",)),
    route("/admin/users", page(users_page)),
    route("/admin/user", submit(user_spec, create_user, again(users_page)), methods=("POST",)),
    route("/admin/user/role", submit(user_spec_of("role"), change_role, again(users_page)), methods=("POST",)),
    route("/admin/user/unlock", submit(user_spec_of("unlock"), unlock_user, again(users_page)), methods=("POST",)),
    route("/admin/user/password", submit(user_spec_of("password"), set_password, again(users_page)), methods=("POST",)),
    route("/admin/parameters", page(parameters_page)),
    route("/admin/parameters", submit(lambda ctx: PARAMETERS_SPEC, set_parameters, again(parameters_page)),
          methods=("POST",)),
    route("/admin/audit", page(audit_page)),
    route("/admin/audit/verify", submit(lambda ctx: VERIFY_SPEC, verify_audit), methods=("POST",)),
]
