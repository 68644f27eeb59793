"""Values PostgreSQL refuses (NUL in text) are the client's error, never a
503 "database unavailable". SQLite stores them happily, so this needs Postgres."""

from __future__ import annotations


def test_nul_characters_are_client_errors(pg_app, pg_user):
    client, user = pg_app.test_client(), pg_user
    resp = client.post("/api/generate/from-prompt", json={"prompt": "a\x00b"}, headers=user.headers)
    assert resp.status_code == 422, resp.get_json()
    assert resp.get_json()["error"]["details"][0]["field"] == "prompt"
    resp = client.get("/api/generate/gen_%00", headers=user.headers)  # names nothing, as on SQLite
    assert resp.status_code == 404, resp.get_json()
    assert resp.get_json()["error"]["code"] == "not_found"
    resp = client.get("/api/generate", headers={"Authorization": "Bearer bff_\x00_x"})
    assert resp.status_code == 401, resp.get_json()
    assert client.get("/health").status_code == 200
