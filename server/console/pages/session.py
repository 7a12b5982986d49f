"""Logging in and out, and the language switch.

Login is AdminService.Login: the API's password check, its lockout after
the domain's login_failures_max wrong passwords, its bounded hash gate. The
token it gives stays in the session on the server; the browser gets a new
opaque session id (never the one the login form had).
"""

import grpc
from starlette.responses import RedirectResponse

from server.console import i18n
from server.console.api import ApiError
from server.console.sessions import User
from server.console.web import (
    Ctx,
    cookie_name,
    csrf_refused,
    route,
    safe_next,
    session_of,
    set_session_cookie,
)
from tally.v1 import admin_pb2

USERNAME_LENGTH_MAX = 64
PASSWORD_LENGTH_MAX = 256


def _login_page(ctx: Ctx, status: int = 200, error: str = "", username: str = "", next_path: str = "/"):
    response = ctx.render("login.html", status=status, error=error, username=username, next_path=next_path,
                          ended=ctx.request.query_params.get("ended") == "1")
    set_session_cookie(ctx.console, response, ctx.session)
    return response


async def login_form(request):
    console = request.app.state.console
    session = session_of(console, request)
    if session is not None and session.logged_in:
        return RedirectResponse(safe_next(request.query_params.get("next", "/")), status_code=303)
    if session is None:
        session = console.sessions.anonymous()
    return _login_page(Ctx(console, request, session), next_path=safe_next(request.query_params.get("next", "/")))


async def _posted(request):
    """(console, session, form data, None) of a form posted with the
    session's CSRF token; (..., the refusal to answer) otherwise."""
    console = request.app.state.console
    session = session_of(console, request)
    data = await request.form()
    if session is None or not session.csrf_ok(str(data.get("csrf", ""))):
        return console, session, data, csrf_refused(Ctx(console, request, session or console.sessions.anonymous()))
    return console, session, data, None


async def login(request):
    console, session, data, refused = await _posted(request)
    if refused is not None:
        return refused
    ctx = Ctx(console, request, session)
    username = str(data.get("username", "")).strip()[:USERNAME_LENGTH_MAX]
    password = str(data.get("password", ""))[:PASSWORD_LENGTH_MAX + 1]
    next_path = safe_next(str(data.get("next", "/")))
    if not username or not password:
        return _login_page(ctx, 400, ctx.t("Give your username and password."), username, next_path)
    try:
        answer = await console.api.call("", "admin", "Login", admin_pb2.LoginRequest(username=username, password=password))
    except ApiError as error:
        status = 503 if error.code == grpc.StatusCode.RESOURCE_EXHAUSTED else 401
        return _login_page(ctx, status, error.text, username, next_path)
    user = User(answer.user.username, answer.user.org_id, admin_pb2.Role.Name(answer.user.role).removeprefix("ROLE_"))
    logged_in = console.sessions.login(session, answer.token, user, answer.expires_ms)
    response = RedirectResponse(next_path, status_code=303)
    set_session_cookie(console, response, logged_in)
    return response


async def logout(request):
    console, session, data, refused = await _posted(request)
    if refused is not None:
        return refused
    if session.logged_in:
        try:
            await console.api.call(session.token, "admin", "Logout", admin_pb2.LogoutRequest())
        except ApiError:
            pass  # an ended token: the session goes either way
    console.sessions.drop(session)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(cookie_name(console), path="/", secure=console.settings.tls, httponly=True,
                           samesite="strict")
    return response


async def switch_locale(request):
    console, session, data, refused = await _posted(request)
    if refused is not None:
        return refused
    locale = str(data.get("locale", ""))
    if locale in i18n.LOCALES:
        session.locale = locale
    return RedirectResponse(safe_next(str(data.get("next", "/"))), status_code=303)


ROUTES = [
    route("/login", login_form),
    route("/login", login, methods=("POST",)),
    route("/logout", logout, methods=("POST",)),
    route("/locale", switch_locale, methods=("POST",)),
]
