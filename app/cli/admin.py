"""Administration on the configured database: ``bff db upgrade``,
``bff users create|revoke|cap``."""

from __future__ import annotations

import unicodedata
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from typing import TYPE_CHECKING

import click

from app.cli import upgrade_database, with_app

if TYPE_CHECKING:
    from flask import Flask

db_cli = click.Group("db", help="Database migrations.")


@db_cli.command("upgrade")
@with_app
def db_upgrade(app: Flask) -> None:
    """Migrate the configured database (DATABASE_URL) to head."""
    from app.platform.schema import code_revisions, database_heads

    s = app.extensions["bff"]

    def revisions() -> frozenset[str]:
        with s.db.engine.connect() as conn:
            return database_heads(conn)

    def named(revs: frozenset[str]) -> str:
        return ", ".join(sorted(revs)) or "none (empty)"

    before, (heads, known) = revisions(), code_revisions()
    if not before <= known:
        # A newer release migrated it (this is a rollback, or an old copy
        # still running): what /health accepts, not a revision error.
        click.echo(
            f"database at {named(before)}, ahead of this code's head {named(heads)}: left as it is"
        )
        return
    upgrade_database(s.settings.database_url)
    after = revisions()
    said = (
        f"migrated from {named(before)} to {named(after)}"
        if after != before
        else f"already at {named(after)}"
    )
    click.echo(f"database {said}: the code's head")


users_cli = click.Group("users", help="Users and their API keys.")
NAME_MAX = 120  # users.name is String(120)
# Control characters (tab, newline, ESC, C1's NEL, …) and line or paragraph
# separators: a name is printed one to a line (``bff users list``, logs).
BREAKS_LINES = frozenset({"Cc", "Zl", "Zp"})


def _name_problem(name: str) -> str | None:
    """Why NAME cannot be a user's name, or None."""
    if not name.strip():
        return "empty or only blanks"
    if len(name) > NAME_MAX:  # PostgreSQL would refuse it (SQLite keeps it)
        return f"longer than {NAME_MAX} characters"
    for c in name:
        kind = unicodedata.category(c)
        if kind == "Cs":  # an argument's bytes that were not UTF-8 (surrogateescape)
            return "not valid UTF-8"
        if kind in BREAKS_LINES:
            return f"holds a control character (U+{ord(c):04X})"
    return None


@users_cli.command("create")
@click.argument("name")
@with_app
def users_create(app: Flask, name: str) -> None:
    """Create NAME (or add a key to it) and print a new API key, shown once."""
    from app.api.auth import create_user

    if problem := _name_problem(name):
        raise click.BadParameter(problem, param_hint="NAME")
    with app.extensions["bff"].db.session() as session:
        user, key = create_user(session, name)
    click.echo(f"user {name} (id {user.id}); API key, shown once:")
    click.echo(key)


@users_cli.command("revoke")
@click.argument("key_prefix")
@with_app
def users_revoke(app: Flask, key_prefix: str) -> None:
    """Revoke the key with KEY_PREFIX (e.g. bff_1a2b3c4d, the part before its
    second underscore); the whole key may be given instead."""
    from app.api.auth import key_prefix as prefix_of
    from app.api.auth import revoke

    prefix = prefix_of(key_prefix)
    with app.extensions["bff"].db.session() as session:
        n = revoke(session, prefix)
    if not n:  # the prefix looked for, never a whole key pasted (its secret)
        raise click.ClickException(f"no active key with prefix {prefix}")
    click.echo(f"revoked {n} key(s)")


@users_cli.command("list")
@with_app
def users_list(app: Flask) -> None:
    """Each user: id, daily cap, what they paid or hold today, their keys' prefixes
    (what ``bff users revoke`` takes; revoked ones in brackets)."""
    from sqlalchemy import select

    from app.domain import spend
    from app.domain.models import ApiKey, User

    with app.extensions["bff"].db.session() as session:
        users = session.scalars(select(User).order_by(User.name)).all()
        keys = session.execute(
            select(ApiKey.user_id, ApiKey.prefix, ApiKey.revoked_at).order_by(ApiKey.created_at)
        ).all()
        if not users:
            click.echo("no users yet: bff users create NAME")
        for user in users:
            prefixes = [p if gone is None else f"[{p}]" for uid, p, gone in keys if uid == user.id]
            cap = "no cap" if user.daily_spend_cap is None else f"cap ${user.daily_spend_cap}"
            paid = spend.spent_today(session, user.id)
            owned = " ".join(prefixes) or "-"
            spent = f"${paid:.2f} paid or held today"
            click.echo(f"{user.name} (id {user.id}): {cap}, {spent}; keys {owned}")


CAP_PLACES = Decimal("0.0001")  # users.daily_spend_cap is Numeric(10, 4)
MAX_CAP = Decimal("999999.9999")


def _amount(raw: str | None) -> Decimal | None:
    if raw is None:
        return None
    try:
        cap = Decimal(raw)
    except InvalidOperation:
        raise click.BadParameter(f"{raw!r} is not an amount in USD", param_hint="AMOUNT") from None
    if not cap.is_finite() or cap < 0:
        raise click.BadParameter(f"{raw} is not a cap: give 0 or more USD", param_hint="AMOUNT")
    if cap > MAX_CAP:
        raise click.BadParameter(f"{raw} is more than a cap holds: {MAX_CAP}", param_hint="AMOUNT")
    # As the column keeps it (4 places), rounded down: a cap never allows more than asked.
    return cap.quantize(CAP_PLACES, rounding=ROUND_DOWN)


# A negative AMOUNT is an amount (refused as such), not an unknown option.
@users_cli.command("cap", context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("amount", required=False)
@with_app
def users_cap(app: Flask, name: str, amount: str | None) -> None:
    """Set NAME's daily spend cap in USD (omit AMOUNT to remove it)."""
    from sqlalchemy import select

    from app.domain.models import User

    cap = _amount(amount)
    with app.extensions["bff"].db.session() as session:
        user = session.scalar(select(User).where(User.name == name))
        if user is None:
            raise click.ClickException(f"no user named {name}")
        user.daily_spend_cap = cap
    click.echo(f"{name}: daily cap {'none' if cap is None else f'${cap}'}")


providers_cli = click.Group("providers", help="The image providers.")


@providers_cli.command("check")
@with_app
def providers_check(app: Flask) -> None:
    """Verify each configured key with a free call; say which work."""
    from app.providers import PROVIDERS, verify

    broken = unchecked = 0
    checked = verify.check_all(app.extensions["bff"].settings)
    for pid, entry in PROVIDERS.items():
        result = checked[pid]
        # A configured key the provider could not be asked about is no "ok".
        unknown = result.configured and entry.key_env_var and result.verified is None
        mark = "UNKNOWN" if unknown else {True: "ok", False: "FAILED", None: "-"}[result.verified]
        click.echo(f"{pid:<18} {mark:<7} {result.detail}")
        broken += result.verified is False
        unchecked += bool(unknown)
    if broken or unchecked:
        said = [f"{broken} provider key(s) did not work"] if broken else []
        said += [f"{unchecked} could not be checked (provider unreachable?)"] if unchecked else []
        raise click.ClickException("; ".join(said))


COMMANDS = (db_cli, users_cli, providers_cli)
