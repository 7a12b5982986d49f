"""The web console: the back office and the station counter in a browser.

Owns (one module each):
  __main__.py  the console's process (`python -m server.console`, `tally console`)
  serve.py     starting and stopping that process from the server (`--console-listen`)
  web.py       the Starlette app, security headers, sessions on requests,
               rendering, the one way a form's submission runs (CSRF, once only)
  sessions.py  sessions (the token stays here), CSRF tokens, form nonces
  api.py       the gRPC client: every page calls the server's own API with
               the logged-in user's token, so its rules are the only rules
  forms.py     form specs, reading input, errors beside the field
  i18n.py      zh-CN and English, money (minor units), dates in the network's zone
  messages.py  the Chinese texts
  charts.py    inline SVG charts
  pages/       one module per part: dashboard, cards, customers, promotions,
               loyalty, settlement, risk, administration
  templates/   Jinja2 templates; static/ the stylesheet (no script at all)
Used by: server/app.py (starts it), server/cli.py (`tally console`).

Here, in the server package, because the server starts it and nothing else
uses it; it reaches the books only through the gRPC API, like any client.
"""
