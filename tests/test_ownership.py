"""Nobody touches another user's work: every route that takes an id answers
404 to another user's key, whatever the method, and changes nothing."""

from __future__ import annotations

import logging

from app.domain.models import Generation, Persona
from tests.support.pipeline import run_all, submit_image, submit_prompt

BODIES = {"feedback": {"feedbackType": "heart"}, "personas": {"name": "x"}}


def test_every_id_route_is_owned(app, client, user, other_user):
    persona = {"name": "Minimal", "keywords": ["clean"]}
    ids = {
        "generation_id": submit_prompt(client, user.headers, "teal silk scarf"),
        "persona_id": client.post("/api/personas", json=persona, headers=user.headers).json["id"],
    }
    checked = []
    for rule in app.url_map.iter_rules():
        params = set(rule.arguments) & set(ids)
        if not params:
            continue
        url = rule.rule
        for p in params:
            url = url.replace(f"<{p}>", ids[p])
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            body = next((v for k, v in BODIES.items() if k in url), {})
            resp = client.open(url, method=method, json=body, headers=other_user.headers)
            assert resp.status_code == 404, (method, url, resp.status_code, resp.get_data())
            assert resp.json["error"]["code"] == "not_found"
            checked.append((method, rule.rule))
    # The routes this contract names are all among those checked.
    for expected in [
        ("GET", "/api/generate/<generation_id>"),
        ("DELETE", "/api/generate/<generation_id>"),
        ("POST", "/api/generate/<generation_id>/cancel"),
        ("POST", "/api/generate/<generation_id>/retry"),
        ("POST", "/api/generate/<generation_id>/feedback"),
        ("GET", "/api/personas/<persona_id>"),
        ("PATCH", "/api/personas/<persona_id>"),
        ("DELETE", "/api/personas/<persona_id>"),
    ]:
        assert expected in checked
    with app.extensions["bff"].db.session() as session:
        assert session.get(Generation, ids["generation_id"]).status == "pending"
        assert session.get(Persona, ids["persona_id"]).name == "Minimal"


def test_logs_never_contain_api_keys(app, client, user, caplog):
    caplog.set_level(logging.DEBUG)
    client.post("/api/generate/from-prompt", json={"prompt": "x"}, headers=user.headers)
    submit_image(client, user.headers)
    client.get("/api/generate/nope", headers={"Authorization": "Bearer " + user.key + "x"})
    client.get("/api/generate", headers={"Authorization": "Bearer bff_deadbeef_secret"})
    text = caplog.text
    assert user.key not in text and user.key.split("_", 2)[2] not in text
    assert "bff_deadbeef_secret" not in text


def test_an_uploaded_photo_is_not_served_beside_its_images(app, client, user):
    """An image's URL is shared (it is public by design); the photo uploaded
    for it is not, nor is its key derivable from that URL."""
    gen_id = submit_image(client, user.headers).json["id"]
    run_all(app, gen_id)
    gen = client.get(f"/api/generate/{gen_id}", headers=user.headers).json
    assert gen["status"] == "completed", gen["error"]
    folder = gen["assets"][0]["url"].split("/cdn/", 1)[1].rsplit("/", 1)[0]
    assert client.get(f"/cdn/{gen['assets'][0]['url'].split('/cdn/', 1)[1]}").status_code == 200
    for ext in ("png", "jpg", "jpeg", "webp"):
        assert client.get(f"/cdn/{folder}/input.{ext}").status_code == 404
    with app.extensions["bff"].db.session() as session:
        key = session.get(Generation, gen_id).input_key
    assert key.startswith(f"{folder}/input-") and len(key) > len(f"{folder}/input-.png") + 30
