"""The browser app served at `/` (static files in server/web/static) and the offline API docs pages."""

from server.web.router import install_web

__all__ = ["install_web"]
