"""The HTTP API's former single module: ``create_app`` now lives in ``app``, the routes in ``routes/``.

Kept so ``from instantstyle.server.http_api import create_app`` goes on working.
"""

from .app import create_app
from .http_errors import error_response
from .policy import api_key_ok

__all__ = ["create_app", "api_key_ok", "error_response"]
