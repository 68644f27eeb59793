import workers
import workers.tasks as t
from app.events import generation_final
from app.pipeline.runner import CONTINUE, Outcome

def fake(db, settings, storage, gid, name, task_id=None):
    if name == "store":
        generation_final(settings, gid, "completed", None, record_webhook=False)
        return Outcome.stop()
    return CONTINUE

t.run_stage = fake
celery = app = workers.celery
