"""The console's pages, one module per part of the back office; ROUTES is
every route of them all (server/console/serve.py serves it)."""

from server.console.pages import admin, cards, customers, dashboard, loyalty, promotions, risk, session, settlement

ROUTES = [*session.ROUTES, *dashboard.ROUTES, *cards.ROUTES, *customers.ROUTES, *promotions.ROUTES, *loyalty.ROUTES,
          *settlement.ROUTES, *risk.ROUTES, *admin.ROUTES]
