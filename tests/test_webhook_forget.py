"""A delete takes its webhook messages with it: each body holds a copy of what
was deleted (the prompt, the images' URLs). One still to be sent is sent
first, then forgotten."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from app import create_app
from app.webhooks import WebhookDelivery, attempt
from tests.conftest import User, make_user
from tests.test_api_batches import items, run_batch
from tests.test_api_batches import submit as submit_batch
from tests.test_webhooks import DEV, Receiver, deliveries, dns, finished, submit  # noqa: F401


@pytest.fixture
def hooked(app_config) -> Iterator[tuple[Flask, FlaskClient, User, Receiver]]:
    """An app, its client, a user, and a receiver answering 200, its URL in a
    finished generation's webhookUrl: (app, client, user, receiver)."""
    app = create_app({**app_config, **DEV})
    receiver = Receiver([200])
    try:
        yield app, app.test_client(), make_user(app, "hooked"), receiver
    finally:
        receiver.close()


def send(app: Flask, delivery_id: str) -> None:
    s = app.extensions["bff"]
    assert attempt(s.db, s.settings, delivery_id, 1) is None  # final: nothing more to send


def test_a_deleted_generations_sent_message_goes_with_it(hooked):
    app, client, user, receiver = hooked
    gen_id = submit(client, user, receiver.url)
    send(app, finished(app, gen_id).id)
    assert [x.status for x in deliveries(app, gen_id)] == ["delivered"]
    assert client.delete(f"/api/generate/{gen_id}", headers=user.headers).status_code == 204
    assert deliveries(app, gen_id) == []


def test_a_message_pending_at_the_delete_is_sent_then_forgotten(hooked):
    app, client, user, receiver = hooked
    gen_id = submit(client, user, receiver.url)
    d = finished(app, gen_id)  # its generation.completed not sent yet
    assert client.delete(f"/api/generate/{gen_id}", headers=user.headers).status_code == 204
    assert [x.status for x in deliveries(app, gen_id)] == ["pending"]
    send(app, d.id)
    assert len(receiver.received) == 1  # the receiver still hears of it
    assert deliveries(app, gen_id) == []


def test_a_deleted_batchs_messages_go_with_it(app_config):
    app = create_app({**app_config, "BFF_ALLOW_HTTP_WEBHOOKS": "1"})
    client, user = app.test_client(), make_user(app, "batches")
    hook = "http://127.0.0.1:9/done"
    body = {"items": items(2, webhookUrl=hook), "webhookUrl": hook}
    batch_id = submit_batch(client, user, body)["id"]
    run_batch(app, client, user, batch_id)
    with app.extensions["bff"].db.session() as session:
        mine = select(WebhookDelivery).where(WebhookDelivery.user_id == user.id)
        sent = session.scalars(mine).all()
        assert len(sent) == 3  # each item's completion and the batch's
        session.query(WebhookDelivery).update({"status": "failed"})  # their receiver is down
        session.commit()
    assert client.delete(f"/api/batches/{batch_id}", headers=user.headers).status_code == 204
    with app.extensions["bff"].db.session() as session:
        assert session.scalars(mine).all() == []
