"""/api/personas: CRUD, ownership (another user's persona is a 404), one
default per user, validation errors as 422 JSON."""

from __future__ import annotations

import pytest

BODY = {
    "name": "Evening",
    "description": "Gala looks",
    "keywords": ["evening gown", "couture"],
    "palette": ["emerald", "gold"],
    "aesthetic": "elegant",
}


def create(client, user, **over) -> dict:
    resp = client.post("/api/personas", json={**BODY, **over}, headers=user.headers)
    assert resp.status_code == 201, resp.get_json()
    assert resp.headers["Location"] == f"/api/personas/{resp.get_json()['id']}"
    return resp.get_json()


def defaults(client, user) -> dict[str, bool]:
    items = client.get("/api/personas", headers=user.headers).get_json()["items"]
    return {i["id"]: i["isDefault"] for i in items}


def test_create_show_list_patch_delete(client, user):
    p = create(client, user)
    assert p["id"].startswith("per_")
    assert {k: p[k] for k in BODY} == BODY and p["isDefault"] is False
    assert p["createdAt"].endswith("Z")
    assert client.get(f"/api/personas/{p['id']}", headers=user.headers).get_json() == p

    q = create(client, user, name="Boho", keywords=["lace"])
    items = client.get("/api/personas", headers=user.headers).get_json()["items"]
    assert [i["id"] for i in items] == [p["id"], q["id"]]

    resp = client.patch(
        f"/api/personas/{p['id']}", json={"keywords": ["gala"]}, headers=user.headers
    )
    assert resp.status_code == 200
    patched = resp.get_json()
    assert patched["keywords"] == ["gala"] and patched["name"] == "Evening"  # partial update

    assert client.delete(f"/api/personas/{p['id']}", headers=user.headers).status_code == 204
    assert client.get(f"/api/personas/{p['id']}", headers=user.headers).status_code == 404


def test_only_one_default_persona_per_user(client, user, other_user):
    a = create(client, user, isDefault=True)
    theirs = create(client, other_user, isDefault=True)
    b = create(client, user, name="Second", isDefault=True)
    assert defaults(client, user) == {a["id"]: False, b["id"]: True}
    client.patch(f"/api/personas/{a['id']}", json={"isDefault": True}, headers=user.headers)
    assert defaults(client, user) == {a["id"]: True, b["id"]: False}
    # Another user's default is untouched.
    assert client.get(f"/api/personas/{theirs['id']}", headers=other_user.headers).get_json()[
        "isDefault"
    ]


def test_another_users_persona_is_neither_listed_nor_usable(client, user, other_user):
    """Its own routes answer another user 404: tests/test_ownership.py."""
    p = create(client, user)
    assert client.get("/api/personas", headers=other_user.headers).get_json()["items"] == []
    # Nor can it be named in a generation.
    resp = client.post(
        "/api/generate/from-prompt",
        json={"prompt": "a gown", "personaId": p["id"]},
        headers=other_user.headers,
    )
    assert resp.status_code == 422
    assert resp.get_json()["error"]["details"][0]["field"] == "personaId"


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": ""},
        {"name": "x", "keywords": "silk"},
        {"name": "x", "keywords": ["k"] * 51},
        {"name": "x", "palette": [1, 2]},
        {"name": "x" * 121},
        {"name": "x", "isDefault": "maybe"},
        {"name": "x", "isDefault": 0},
        {"name": "x", "colour": "red"},
        {"name": "x", "keywords": ["k" * 81]},  # each entry is a few words
        {"name": "x", "palette": ["c" * 41]},
    ],
)
def test_invalid_bodies_are_422(client, user, body):
    resp = client.post("/api/personas", json=body, headers=user.headers)
    assert resp.status_code == 422, resp.get_json()
    err = resp.get_json()["error"]
    assert err["code"] == "validation_error" and err["details"]


def test_patch_validates_too_and_bad_requests_are_json(client, user):
    p = create(client, user)
    url = f"/api/personas/{p['id']}"
    assert client.patch(url, json={"name": ""}, headers=user.headers).status_code == 422
    # null: aesthetic, which may be null, is cleared; a field that may not is a 422
    # (both were 200 and changed nothing).
    cleared = client.patch(url, json={"aesthetic": None}, headers=user.headers)
    assert cleared.status_code == 200 and cleared.get_json()["aesthetic"] is None
    for field in ("name", "keywords", "isDefault"):
        refused = client.patch(url, json={field: None}, headers=user.headers)
        assert refused.status_code == 422, (field, refused.get_json())
        assert refused.get_json()["error"]["details"][0]["field"] == field
    assert client.get(url, headers=user.headers).get_json()["name"] == p["name"]
    resp = client.post("/api/personas", data="name=x", headers=user.headers)
    assert resp.status_code == 415 and resp.get_json()["error"]["code"] == "unsupported_media_type"
    resp = client.post(
        "/api/personas", data="{oops", headers={**user.headers, "Content-Type": "application/json"}
    )
    assert resp.status_code == 400
    assert client.get("/api/personas").status_code == 401
    assert client.get("/api/personas/per_nope", headers=user.headers).status_code == 404


def test_an_account_keeps_at_most_a_hundred_personas(app, client, user, monkeypatch):
    """Each of a user's jobs reads all their personas, and the list is one answer."""
    from app.api import personas

    assert personas.MAX_PERSONAS == 100
    monkeypatch.setattr(personas, "MAX_PERSONAS", 3)
    made = [create(client, user, name=f"p{i}") for i in range(3)]
    resp = client.post("/api/personas", json={"name": "one more"}, headers=user.headers)
    assert resp.status_code == 409, resp.get_json()
    assert "delete one first" in resp.get_json()["error"]["message"]
    assert client.delete(f"/api/personas/{made[0]['id']}", headers=user.headers).status_code == 204
    assert (
        client.post("/api/personas", json={"name": "now"}, headers=user.headers).status_code == 201
    )


def test_concurrent_creates_keep_the_cap_and_one_default(pg_app, pg_user, at_once, monkeypatch):
    """The count, and the unsetting of other defaults, were read before a
    concurrent create had committed: 6 creates at a cap of 3 made 6 personas."""
    import time

    from app.api import personas

    real_room, real_only = personas._room_for_one, personas._only_default
    # Widen each window: between counting and inserting, between inserting and unsetting.
    monkeypatch.setattr(personas, "_room_for_one", lambda s: real_room(s) or time.sleep(0.1))
    monkeypatch.setattr(personas, "_only_default", lambda s, k: time.sleep(0.1) or real_only(s, k))
    monkeypatch.setattr(personas, "MAX_PERSONAS", 3)
    body = {**BODY, "isDefault": True}
    answers = at_once(6, lambda c: c.post("/api/personas", json=body, headers=pg_user.headers))
    assert sorted(a.status_code for a in answers) == [201] * 3 + [409] * 3
    assert sorted(defaults(pg_app.test_client(), pg_user).values()) == [False, False, True]


def test_a_patch_racing_a_delete_is_a_404_not_a_500(pg_app, pg_user, at_once, monkeypatch):
    import itertools
    import time

    from app.api import personas

    client = pg_app.test_client()
    made = client.post("/api/personas", json=BODY, headers=pg_user.headers).get_json()
    real = personas._owned  # widen the window between reading the row and writing it
    monkeypatch.setattr(personas, "_owned", lambda s, i: (real(s, i), time.sleep(0.1))[0])
    url, turn = f"/api/personas/{made['id']}", itertools.count()

    def patch_or_delete(c):
        if next(turn) == 0:
            return c.delete(url, headers=pg_user.headers)
        return c.patch(url, json={"isDefault": True}, headers=pg_user.headers)

    answers = at_once(5, patch_or_delete)
    assert {a.status_code for a in answers} <= {200, 204, 404}, [a.get_json() for a in answers]
    assert 204 in {a.status_code for a in answers}
