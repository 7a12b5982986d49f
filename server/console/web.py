"""The console's web layer: the Starlette app, its security headers, sessions
on requests, rendering, and the one way a form's submission runs.

Owns: `Console` (the settings, the API client, the sessions, the templates),
`Ctx` (one request: its session, the user's calls to the API, rendering
with the user's language and the network's formats), the ASGI middleware
that puts the security headers and Server-Timing on every answer, and
`submit`, which every POST goes through: a logged-in session, the CSRF
token, the form's nonce (once only), then the page's action.
Used by: server/console/__main__.py (builds and serves the app), the pages.

Security headers on every answer: Content-Security-Policy (no script at
all, styles from the console's own file, frames refused), X-Frame-Options
DENY, X-Content-Type-Options nosniff, Referrer-Policy no-referrer,
Cache-Control no-store (pages hold personal data), and
Strict-Transport-Security when the console speaks TLS.
"""

import asyncio
import inspect
import os
import time
import urllib.parse

import grpc
import jinja2
import msgspec
from starlette.applications import Starlette
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from server.console import i18n
from server.console.api import Api, ApiError
from server.console.forms import Form, FormSpec, raw_values, read
from server.console.sessions import COOKIE_NAME, TLS_COOKIE_NAME, Outcome, Session, SessionStore, valid_nonce

HERE = os.path.dirname(os.path.abspath(__file__))
CONTENT_SECURITY_POLICY = ("default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
                           "frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
)
HSTS = (b"strict-transport-security", b"max-age=31536000")
# Uploads (statement files) and forms: the largest body read.
BODY_BYTES_MAX = 64 * 2**20 + 64 * 1024


class ConsoleSettings(msgspec.Struct, frozen=True):
    locale: str
    utc_offset_minutes: int
    currency: str
    tls: bool


class LoginAgain(Exception):
    """The API no longer takes the session's token: log in again."""


class Console:
    def __init__(self, settings: ConsoleSettings, api: Api):
        self.settings = settings
        self.api = api
        self.sessions = SessionStore(settings.locale)
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(os.path.join(HERE, "templates")), autoescape=True,
            undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


class Ctx:
    """One request to the console."""

    def __init__(self, console: Console, request, session: Session | None):
        self.console = console
        self.request = request
        self.session = session
        self.settings = console.settings

    @property
    def locale(self) -> str:
        return self.session.locale if self.session is not None else self.settings.locale

    @property
    def user(self):
        return self.session.user

    def t(self, text: str) -> str:
        return i18n.translate(self.locale, text)

    def money(self, minor: int) -> str:
        return i18n.money(minor, self.settings.currency, self.locale)

    def when(self, ms: int) -> str:
        return i18n.when(ms, self.settings.utc_offset_minutes, self.locale)

    def day(self, number: int) -> str:
        return i18n.day(number, self.locale)

    def today(self) -> int:
        return (time.time_ns() // 1_000_000 + self.settings.utc_offset_minutes * 60_000) // 86_400_000

    async def call(self, service: str, rpc: str, request):
        return await self._api(self.console.api.call, service, rpc, request)

    async def stream(self, service: str, rpc: str, request) -> list:
        return await self._api(self.console.api.stream, service, rpc, request)

    async def send_stream(self, service: str, rpc: str, messages):
        return await self._api(self.console.api.send_stream, service, rpc, messages)

    async def _api(self, method, service: str, rpc: str, argument):
        """An API call with the session's token; a token the server no
        longer takes ends the session (LoginAgain)."""
        try:
            return await method(self.session.token, service, rpc, argument)
        except ApiError as error:
            self._check_login(error)
            raise

    async def maybe(self, service: str, rpc: str, request):
        """A call whose refusal (a role without the right, say) the page
        shows in place of its part: (answer, None) or (None, ApiError)."""
        try:
            return await self.call(service, rpc, request), None
        except ApiError as error:
            return None, error

    def _check_login(self, error: ApiError):
        if error.code == grpc.StatusCode.UNAUTHENTICATED:
            self.console.sessions.drop(self.session)
            raise LoginAgain(error.text)

    def form(self, spec: FormSpec, values: dict | None = None) -> Form:
        return Form(spec, values)

    def flash(self, kind: str, text: str):
        self.session.flash(kind, text)

    def render(self, template: str, status: int = 200, **context) -> HTMLResponse:
        page = self.console.templates.get_template(template).render(
            t=self.t, money=self.money, when=self.when, day=self.day, iso_day=i18n.iso_day, user=self.session.user if self.session else None,
            csrf=self.session.csrf if self.session else "", locale=self.locale, locales=i18n.LOCALES,
            locale_names=i18n.LOCALE_NAMES, flashes=self.session.take_flashes() if self.session else [],
            path=self.request.url.path, currency=self.settings.currency, amount_text=self._amount_text, **context)
        return HTMLResponse(page, status_code=status)

    def _amount_text(self, minor: int) -> str:
        return i18n.plain_amount(minor, self.settings.currency)

    def redirect(self, url: str) -> RedirectResponse:
        return RedirectResponse(url, status_code=303)


# ---------------------------------------------------------------- sessions on requests


def cookie_name(console: Console) -> str:
    return TLS_COOKIE_NAME if console.settings.tls else COOKIE_NAME


def session_of(console: Console, request) -> Session | None:
    return console.sessions.get(request.cookies.get(cookie_name(console)))


def set_session_cookie(console: Console, response: Response, session: Session):
    response.set_cookie(cookie_name(console), session.session_id, httponly=True, samesite="strict",
                        secure=console.settings.tls, path="/")


def login_redirect(request) -> RedirectResponse:
    return RedirectResponse("/login?" + urllib.parse.urlencode({"next": request.url.path}), status_code=303)


def safe_next(target: str) -> str:
    """Only a path of this console (never another site)."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def page(handler):
    """A GET page: a logged-in session or the login form."""

    async def endpoint(request):
        console: Console = request.app.state.console
        session = session_of(console, request)
        if session is None or not session.logged_in:
            return login_redirect(request)
        ctx = Ctx(console, request, session)
        try:
            return await handler(ctx, **request.path_params)
        except LoginAgain as refused:
            return _login_again(refused)
        except ApiError as error:
            return error_page(ctx, error)

    return endpoint


def submit(spec_of, action, on_error=None):
    """A POST: logged in, CSRF token right, once per nonce. spec_of(ctx) is
    the form's spec (or a coroutine of it); action(ctx, values, nonce)
    makes the calls and returns the answer (usually a redirect), or
    (answer, what a repeat of the nonce gets) when the answer must not be
    shown twice (a secret, personal data); a shape error or an API refusal
    of the input goes to on_error(ctx, form) to show the page again with the
    form and its errors (status 400)."""

    async def endpoint(request):
        console: Console = request.app.state.console
        session = session_of(console, request)
        if session is None or not session.logged_in:
            return login_redirect(request)
        ctx = Ctx(console, request, session)
        data = await request.form(max_part_size=BODY_BYTES_MAX)
        if not session.csrf_ok(str(data.get("csrf", ""))):
            return csrf_refused(ctx)
        nonce = str(data.get("nonce", ""))
        if not valid_nonce(nonce):
            return PlainTextResponse("the form has no valid nonce: reload the page", status_code=400)
        outcome = session.outcomes.get(nonce)
        if outcome is None and nonce in session.running:
            outcome = await session.running[nonce]
        if outcome is not None:
            return replay(outcome)
        future = request.app.state.loop.create_future()
        session.running[nonce] = future
        try:
            spec = spec_of(ctx, **request.path_params)
            if inspect.isawaitable(spec):
                spec = await spec
            response = await _run(ctx, spec, data, nonce, action, on_error)
            response, again = response if isinstance(response, tuple) else (response, response)
            outcome = Outcome(again.status_code, bytes(again.body), tuple(again.raw_headers))
            session.remember(nonce, outcome)
            future.set_result(outcome)
            return response
        except BaseException as error:
            future.set_exception(error)
            future.exception()  # retrieved: a waiting repeat re-raises it, nobody else
            raise
        finally:
            session.running.pop(nonce, None)

    return endpoint


async def _run(ctx: Ctx, spec: FormSpec, data, nonce: str, action, on_error):
    read_form = read(spec, data, ctx.settings.currency, ctx.settings.utc_offset_minutes)
    form = Form(spec, raw_values(spec, data), {name: ctx.t(text) for name, text in read_form.errors.items()})
    try:
        if read_form.errors:
            return await _show_again(ctx, form, on_error)
        params = ctx.request.path_params
        return await action(ctx, read_form.values, nonce, **params)
    except LoginAgain as refused:
        return _login_again(refused)
    except ApiError as error:
        if on_error is None or error.code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED):
            return error_page(ctx, error)
        form.refuse(error.field, error.text)
        return await _show_again(ctx, form, on_error)


async def _show_again(ctx: Ctx, form: Form, on_error):
    try:
        response = await on_error(ctx, form, **ctx.request.path_params)
    except ApiError as error:
        return error_page(ctx, error)
    response.status_code = 400
    return response


def replay(outcome: Outcome) -> Response:
    """The answer of a form's first submission, for a repeat of its nonce."""
    response = Response(outcome.body, status_code=outcome.status)
    response.raw_headers = list(outcome.headers)
    return response


def _login_again(refused: LoginAgain) -> RedirectResponse:
    return RedirectResponse("/login?" + urllib.parse.urlencode({"ended": "1"}), status_code=303)


ERROR_STATUS = {
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 503,
    grpc.StatusCode.UNAVAILABLE: 503,
}


def error_page(ctx: Ctx, error: ApiError) -> HTMLResponse:
    return ctx.render("error.html", status=ERROR_STATUS.get(error.code, 502), error=error, code=error.code.name)


def csrf_refused(ctx: Ctx) -> HTMLResponse:
    error = ApiError(grpc.StatusCode.PERMISSION_DENIED, ctx.t("The form's security token is missing or wrong: nothing "
                                                              "was done. Reload the page and try again."), "CSRF")
    return ctx.render("error.html", status=403, error=error, code="CSRF")


# ---------------------------------------------------------------- the app


class SecurityHeaders:
    """ASGI middleware: the security headers and Server-Timing on every answer."""

    def __init__(self, app, tls: bool):
        self.app = app
        self.headers = SECURITY_HEADERS + ((HSTS,) if tls else ())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        static = scope["path"].startswith("/static/")

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = [(name, value) for name, value in message.get("headers", ())
                           if name.lower() not in (b"cache-control",) or static]
                headers.extend(self.headers)
                if not static:
                    headers.append((b"cache-control", b"no-store"))
                elapsed_ms = (time.perf_counter() - started) * 1000
                headers.append((b"server-timing", f"app;dur={elapsed_ms:.2f}".encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyLimit:
    """ASGI middleware: a request body above BODY_BYTES_MAX (or of no stated
    length) is refused with 413 before any of it is read."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] not in ("GET", "HEAD"):
            headers = dict(scope["headers"])
            length = headers.get(b"content-length", b"")
            if not length.isdigit() or int(length) > BODY_BYTES_MAX:
                refusal = PlainTextResponse(f"a request body of at most {BODY_BYTES_MAX // 2**20} MiB, with its length "
                                            "stated", status_code=413)
                return await refusal(scope, receive, send)
        await self.app(scope, receive, send)


def build_app(console: Console, routes: list) -> Starlette:
    app = Starlette(routes=[*routes, Mount("/static", StaticFiles(directory=os.path.join(HERE, "static")), name="static")])
    app.state.console = console
    app.state.loop = asyncio.get_running_loop()
    app.add_middleware(BodyLimit)
    # Added last, so outermost: the refusals of the inner ones carry the headers too.
    app.add_middleware(SecurityHeaders, tls=console.settings.tls)
    return app


def route(path: str, endpoint, methods=("GET",)) -> Route:
    return Route(path, endpoint, methods=list(methods))
