"""pairroom-webhook: POST signed room events to a URL. Enable with ``pairroom serve --extension webhook``."""

from .extension import Webhook, WebhookSettings
from .signing import HEADER, sign, verify

__all__ = ["HEADER", "Webhook", "WebhookSettings", "sign", "verify"]
