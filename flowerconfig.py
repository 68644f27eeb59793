"""Flower's settings: ``celery -A workers flower --conf=./flowerconfig.py``
(the Procfile, compose and the README start it so; Flower runs this file).

Flower never runs unauthenticated: without ``FLOWER_BASIC_AUTH=user:password``
(or ``user1:password1,user2:password2``) it refuses to start (``workers.flower``:
started without this file, too). It listens on loopback unless
``FLOWER_ADDRESS`` says otherwise (compose sets ``0.0.0.0`` inside its
container, behind the port mapping).
"""

import os

from workers.flower import credentials

basic_auth = credentials()  # one "user:password" per account
address = os.environ.get("FLOWER_ADDRESS", "127.0.0.1")
port = int(os.environ.get("FLOWER_PORT", "5555"))
persistent = True  # task history survives restarts
# Flower's default keeps 100,000 tasks (beat alone sends some 20,000 a day):
# saving and freeing that many made a stop take 11-15 s, a start 9 s. 10,000
# (about half a day) stop in under 2 s.
max_tasks = 10000
db = os.environ.get("FLOWER_DB", "/tmp/flower.db")
state_save_interval = 60000  # ms
