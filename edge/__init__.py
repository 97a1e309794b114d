"""The HTTP edge of Retinue: aiohttp routes over the runtime and the onboarding app.

The only package that imports aiohttp's web server. `create_app` builds the
application; `register_workflows` registers the workflow code it serves (and
`retinue replay-check` checks); `open_server` / `serve` put it on a socket;
`WebhookCommunicator` is the webhook adapter of the domain's communication
port. Import from here; the modules behind it each own one concept (see the
README's Layout).
"""

from .access import ExposureError, Tokens, check_exposure, is_loopback
from .app import MAX_BODY, create_app
from .errors import ApiError
from .metrics import HttpMetrics
from .openapi import openapi_document
from .routing import Route
from .sampler import quantile
from .serving import Listening, open_server, serve
from .webhook import WebhookCommunicator, WebhookError
from .workflow_code import load_workflows, register_workflows, served_workflows

__all__ = [
    "MAX_BODY",
    "ApiError",
    "ExposureError",
    "HttpMetrics",
    "Listening",
    "Route",
    "Tokens",
    "WebhookCommunicator",
    "WebhookError",
    "check_exposure",
    "create_app",
    "is_loopback",
    "load_workflows",
    "open_server",
    "openapi_document",
    "quantile",
    "register_workflows",
    "serve",
    "served_workflows",
]
