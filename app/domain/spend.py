"""Today's spend against a user's daily cap (``users.daily_spend_cap``), for
work that pays after a generation was accepted.

What was paid is a ledger (``charges``): a row for each payment, committed
the moment a stage has paid (``pay``), kept when its generation is deleted. So
today's spend counts a refine of last week's generation today, and deleting a
generation gives none of its spend back. Today's spend is what today's
charges add up to plus what jobs hold: a stage that is about to pay holds its
estimate (``generations.cost_held``) under the user's row lock, so stages
paying at the same moment take turns at the cap and each counts the others.
The hold becomes a charge (and the generation's ``cost``) when the stage
pays, and is let go when the stage or its generation ends otherwise. The
refine route checks the cap before it queues one; submissions go through
``quotas.check_submission``, which counts the same way (``SPENT``)."""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any, NamedTuple

from sqlalchemy import (
    Date,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    Select,
    String,
    UniqueConstraint,
    bindparam,
    case,
    cast,
    func,
    literal_column,
    select,
    update,
)
from sqlalchemy.orm import Mapped, Session, mapped_column
from sqlalchemy.orm.attributes import set_committed_value

from app.domain.models import Base, Generation, GenerationStage, User, utcnow
from app.platform.db import UtcDateTime, db_time, dialect_insert


class Charge(Base):
    """One payment a stage recorded. No foreign key to its generation: a
    deleted generation's payments still count (the cap, the cost metric)."""

    __tablename__ = "charges"
    __table_args__ = (
        Index("ix_charges_user_created", "user_id", "created_at"),
        Index("ix_charges_created", "created_at"),  # since the metrics' rollup
        UniqueConstraint("generation_id", "payment", name="uq_charges_payment"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    generation_id: Mapped[str] = mapped_column(String(40))
    provider: Mapped[str] = mapped_column(String(40))  # who was paid
    what: Mapped[str] = mapped_column(String(20))  # the stage: generate, refine
    payment: Mapped[str] = mapped_column(String(64))  # what was paid for (``pay``), hashed
    amount: Mapped[Decimal] = mapped_column(Numeric(10, 4))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


def _spent_statement():
    """Built once: the user's charges since ``midnight`` plus what their jobs
    hold now (a partial index finds the few generations holding anything)."""
    user = bindparam("user_id")
    paid = select(func.coalesce(func.sum(Charge.amount), 0)).where(
        Charge.user_id == user, Charge.created_at >= bindparam("midnight")
    )
    held = select(func.coalesce(func.sum(Generation.cost_held), 0)).where(
        Generation.user_id == user, Generation.cost_held > literal_column("0")
    )
    return paid.scalar_subquery() + held.scalar_subquery()


SPENT = _spent_statement()  # parameters: user_id, midnight (``db_time``)
# The key of a stage's saved state naming its latest blocking paid call
# (saved right before it): a re-run that pays nothing new names it again.
PAID_CALL = "paidCall"
# The key of generate's saved state holding the price of one image (USD, a
# string): what a prediction a cancel found succeeded cost.
UNIT_PRICE = "unitPrice"


def pay(
    session: Session,
    gen: Generation,
    amount: Decimal,
    provider: str,
    what: str,
    payment: list[str] | None = None,
    owner: str | None = None,
) -> None:
    """Record that ``what`` (a stage of ``gen``) has just paid ``provider``,
    committed at once: the money is gone whatever befalls the stage next
    (its generation deleted or timed out, its record rolled back, a copy
    that took it over). The hold shrinks by as much: the payment counts from now.
    ``payment`` names what was paid for (prediction ids, or the id a stage
    saved before a blocking call: ``PAID_CALL``), so a resumed stage that
    reads the same results again records nothing twice (the hold it took
    again goes when it ends); without it, the call is a payment of its own.
    ``owner``: the paying copy's task id; the hold shrinks by what was paid
    only while that copy owns the stage (one taken over keeps its hands off
    the new owner's). What is left of it goes when the stage ends."""
    if amount <= 0:
        return
    paid, held = _charge(session, gen.user_id, gen.id, amount, provider, what, payment, owner)
    session.commit()
    # The stage's copy of the row as it now is (not a change to flush).
    set_committed_value(gen, "cost", (gen.cost or Decimal("0")) + paid)
    set_committed_value(gen, "cost_held", held)


class TooLate(NamedTuple):
    """A prediction a cancel found already succeeded: it was paid for."""

    what: str  # the stage that paid: generate, refine
    prediction_id: str
    amount: Decimal
    provider: str


def pay_too_late(session: Session, user_id: int, generation_id: str, late: list[TooLate]) -> None:
    """Record what a cancel (or a timeout's) came too late for, committed
    (the generation may be gone: its payments count all the same)."""
    for t in late:
        _charge(session, user_id, generation_id, t.amount, t.provider, t.what, [t.prediction_id])
    session.commit()


def charged(session: Session, generation_id: str, payments: list[list[str]]) -> Decimal:
    """What the generation's payments of these names (each a ``pay``'s
    ``payment``) add up to: what a resumed stage has paid already."""
    if not payments:
        return Decimal("0")
    hashes = [_name(p) for p in payments]
    total = select(func.coalesce(func.sum(Charge.amount), 0)).where(
        Charge.generation_id == generation_id, Charge.payment.in_(hashes)
    )
    return Decimal(str(session.scalar(total)))


def paid_for_predictions(session: Session, generation_id: str, ids: list[str]) -> Decimal:
    """What these predictions were paid, one by one (or, paid before that was
    so, all together: one payment named by all of them)."""
    return charged(session, generation_id, [[i] for i in ids] + ([ids] if len(ids) > 1 else []))


def paid_all_at_once(session: Session, generation_id: str, ids: list[str]) -> bool:
    """These predictions were paid as one payment, as a stage did until each
    was paid as it was read: a stage resumed across that change pays none again."""
    return len(ids) > 1 and charged(session, generation_id, [ids]) > 0


def _name(payment: list[str] | None) -> str:
    names = ",".join(sorted(payment)) if payment else uuid.uuid4().hex
    return hashlib.sha256(names.encode()).hexdigest()


def _charge(
    session: Session,
    user_id: int,
    generation_id: str,
    amount: Decimal,
    provider: str,
    what: str,
    payment: list[str] | None,
    owner: str | None = None,
) -> tuple[Decimal, Decimal]:
    """``pay`` uncommitted: (what was newly recorded, the hold left). The
    generation's row is locked first, as by everyone who changes it."""
    lock = select(Generation.id).where(Generation.id == generation_id).with_for_update()
    session.execute(lock)  # (a deleted generation: no row; its payment still counts)
    insert = dialect_insert(session.get_bind().dialect.name)(Charge).values(
        user_id=user_id,
        generation_id=generation_id,
        payment=_name(payment),
        provider=provider,
        what=what,
        amount=amount,
        created_at=utcnow(),
    )
    recorded = session.execute(
        insert.on_conflict_do_nothing(index_elements=["generation_id", "payment"]).returning(
            Charge.id
        )
    ).first()
    paid = amount if recorded is not None else Decimal("0")
    held: Any = case((Generation.cost_held > paid, Generation.cost_held - paid), else_=0)
    if owner is not None:
        owns = select(GenerationStage.id).where(
            GenerationStage.generation_id == generation_id,
            GenerationStage.name == what,
            GenerationStage.task_id == owner,
        )
        held = case((owns.exists(), held), else_=Generation.cost_held)
    # (A deleted generation's row: no update; the charge stands.)
    row = session.execute(
        update(Generation)
        .where(Generation.id == generation_id)
        .values(cost=Generation.cost + paid, cost_held=held)
        .returning(Generation.cost_held)
        .execution_options(synchronize_session=False)
    ).first()
    return paid, row[0] if row else Decimal("0")


def paid_total(session: Session, user_id: int) -> float:
    """All the user ever paid, in USD (deleted generations' payments included)."""
    total = select(func.coalesce(func.sum(Charge.amount), 0)).where(Charge.user_id == user_id)
    return float(session.scalar(total))


def paid_by_day(session: Session, user_id: int) -> Select:
    """What the user paid each (UTC) day, by provider: (day, provider, USD)."""
    at = Charge.created_at
    day = func.date(at) if session.get_bind().dialect.name == "sqlite" else cast(at, Date)
    return (
        select(day, Charge.provider, func.sum(Charge.amount))
        .where(Charge.user_id == user_id)
        .group_by(day, Charge.provider)
        .order_by(day)
    )


def midnight() -> datetime:
    """The start of today, UTC: the cap's day."""
    return utcnow().replace(hour=0, minute=0, second=0, microsecond=0)


def spent_today(session: Session, user_id: int) -> float:
    """What the user paid today (UTC) and what their jobs hold now, in USD."""
    params = {"user_id": user_id, "midnight": db_time(session, midnight())}
    return float(session.scalar(select(SPENT), params))


def refusal(session: Session, user_id: int, estimate: float) -> str | None:
    """Why ``estimate`` (USD) more of refining would pass the user's cap today, or None."""
    cap = session.scalar(select(User.daily_spend_cap).where(User.id == user_id))
    return _over(session, user_id, cap, estimate, "refine")


def hold(
    session: Session, gen: Generation, estimate: float, what: str, refuse: bool = True
) -> str | None:
    """Hold ``estimate`` against the cap for ``gen`` (locked by the caller),
    unless it holds already; or, ``refuse``-ing, say why it would pass the
    cap. The user's row stays locked until the caller commits, so holds are
    made one at a time (not against the user's inserts: NO KEY UPDATE)."""
    if gen.cost_held:  # an earlier run of this stage holds it
        return None
    cap = session.scalar(
        select(User.daily_spend_cap).where(User.id == gen.user_id).with_for_update(key_share=True)
    )
    if (why := _over(session, gen.user_id, cap, estimate, what)) and refuse:
        return why
    gen.cost_held = Decimal(str(estimate))
    return None


def release(gen: Generation) -> None:
    """Let the hold go: the stage recorded its cost, or ended without paying."""
    gen.cost_held = Decimal("0")


def _over(
    session: Session, user_id: int, cap: Decimal | None, estimate: float, what: str
) -> str | None:
    if cap is None:
        return None
    return over_cap(spent_today(session, user_id), float(cap), estimate, what)


def over_cap(spent: float, cap: float, estimate: float, what: str) -> str | None:
    """The cap's one rule (submits, stages, refines): why work that may cost
    ``estimate`` (USD) is refused with ``spent`` of ``cap`` gone today, or None.
    Work that costs nothing is never refused, even by a cap of $0."""
    # To the hundredth of a cent: 0.20 + 0.04 is 0.24000000000000002 in floats.
    if estimate <= 0 or round(spent + estimate, 4) <= round(cap, 4):
        return None
    if spent >= cap:
        return f"today's spend ${spent:.2f} has reached your daily cap ${cap:.2f}"
    price = f"{estimate:.2f}" if round(estimate, 2) == estimate else f"{estimate:.4f}"
    return (
        f"this {what} may cost ${price}: with today's ${spent:.2f} "
        f"it would pass your daily cap ${cap:.2f}"
    )
