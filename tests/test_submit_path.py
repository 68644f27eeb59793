"""The submit path's database use: one pooled connection for both of its
transactions (the durable insert, then the relaxed dispatched mark), and the
seven stage rows inserted by one executemany."""

from __future__ import annotations

from sqlalchemy import event, select

from app.models import Generation, GenerationStage
from app.pipeline import STAGES
from tests.support.pipeline import services, submit_prompt


def test_a_submit_checks_out_one_connection(app, client, user):
    submit_prompt(client, user.headers)  # the key is now verified (auth cache)
    checkouts: list[object] = []
    event.listen(services(app).db.engine, "checkout", lambda *a: checkouts.append(a))
    gen_id = submit_prompt(client, user.headers)
    assert len(checkouts) == 1
    with services(app).db.session() as session:
        gen = session.get(Generation, gen_id)
        assert gen.status == "pending" and gen.dispatched_at is not None
        assert [s.name for s in gen.stages] == list(STAGES)
        rows = session.execute(
            select(GenerationStage.name, GenerationStage.position, GenerationStage.status)
            .where(GenerationStage.generation_id == gen_id)
            .order_by(GenerationStage.position)
        ).all()
    assert rows == [(name, i, "pending") for i, name in enumerate(STAGES)]
