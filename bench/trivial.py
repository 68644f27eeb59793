"""The API benchmark's baseline: a trivial JSON endpoint, a Flask app served
by the same gunicorn settings as ours (``gunicorn -c gunicorn.conf.py
bench.trivial:app``), so the production app carries no benchmark route."""

from __future__ import annotations

from flask import Flask, request

app = Flask(__name__)


@app.route("/", defaults={"path": ""}, methods=["GET", "POST"])
@app.route("/<path:path>", methods=["GET", "POST"])
def trivial(path: str):
    if request.method == "POST":
        body = request.get_json(silent=True) or {}
        return {"id": "gen_trivial", "status": "pending", "echo": len(body)}, 202
    return {"id": path, "status": "completed"}
