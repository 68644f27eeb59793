"""Flower's settings: ``celery -A workers flower --conf=./flowerconfig.py``
(the Procfile, compose and the README start it so; Flower runs this file).

Flower never runs unauthenticated: without ``FLOWER_BASIC_AUTH=user:password``
it refuses to start. It listens on loopback unless ``FLOWER_ADDRESS`` says
otherwise (compose sets ``0.0.0.0`` inside its container, behind the port
mapping).
"""

import os
import sys

_auth = os.environ.get("FLOWER_BASIC_AUTH", "")
_user, _, _password = _auth.partition(":")
if not (_user and _password):
    sys.exit("Flower refuses to start without credentials: set FLOWER_BASIC_AUTH=user:password")

basic_auth = [_auth]
address = os.environ.get("FLOWER_ADDRESS", "127.0.0.1")
port = int(os.environ.get("FLOWER_PORT", "5555"))
persistent = True  # task history survives restarts
db = os.environ.get("FLOWER_DB", "/tmp/flower.db")
state_save_interval = 60000  # ms
