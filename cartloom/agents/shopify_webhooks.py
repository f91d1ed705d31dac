"""``POST /webhooks/shopify`` on every worker, and the producer service behind it.

The view hands the aiohttp request to :class:`~cartloom.shopify.receiver.WebhookReceiver`;
the :class:`WebhookProducer` service starts the receiver's batching producer with the
worker and flushes it on shutdown. Until it has started, deliveries get 503.
"""

from __future__ import annotations

from typing import Any, cast

import mode
from faust.web import Request, Response, View

from cartloom.shopify.receiver import build_receiver
from cartloom.stream.app import app, settings

receiver = build_receiver(settings)
# The web server answers before Faust starts extra services (after the group join and
# table recovery): the first delivery connects the producer instead of getting 503s.
receiver.enqueuer.autostart = True


@app.page("/webhooks/shopify")
class ShopifyWebhooks(View):
    """Shopify's deliveries: 200 once durably in ``shopify.webhooks``; 400/401/413/503."""

    async def post(self, request: Request) -> Response:
        """Verify and enqueue one delivery (the request is aiohttp's under Faust's driver)."""
        answer = await receiver.handle(cast(Any, request))
        response = self.bytes(answer.json, content_type="application/json", status=answer.status)
        if answer.closes_connection:
            cast(Any, response).force_close()  # aiohttp's Response under Faust's driver
        return response


@app.service
class WebhookProducer(mode.Service):
    """Runs the receiver's Kafka producer for the worker's lifetime."""

    async def on_start(self) -> None:
        """Connect the producer before the web server takes deliveries."""
        await receiver.enqueuer.start()

    async def on_stop(self) -> None:
        """Wait for in-flight deliveries, then disconnect."""
        await receiver.enqueuer.stop()
