"""pairroom's app for Granian's ASGI server (``--server pairroom-granian`` in ``bench/run.py``).

Granian imports an app by name, so this builds it the way ``pairroom serve`` does, from
``PAIRROOM_*`` variables (``PAIRROOM_DB``, ``PAIRROOM_RATE_LIMIT`` ...). The websocket fast path
(``pairroom/web/frames.py``) needs uvicorn's protocol, so under Granian every frame takes the ASGI
send: this measures Granian's stack, not pairroom's direct writes. Not a dependency of pairroom:
the harness runs it from a separate virtualenv that holds Granian and sees pairroom's.
"""

from __future__ import annotations

from pairroom import extension_loader
from pairroom.app import create_app
from pairroom.config import Settings
from pairroom.web import logs

settings = Settings.from_env()
logs.configure(settings.log_level, settings.log_format)
app = create_app(settings, extensions=extension_loader.load(settings.extensions, settings.extension_settings))
