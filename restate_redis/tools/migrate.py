"""``restate-redis import --from-restate`` and ``export --to-restate``: state moved between
Restate's own K/V state and Redis (the admin API calls are in :mod:`.restate_admin`)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping

from ..records import ObjectRecord
from ..tasks import bounded
from .admin import Admin, SkippedKeys
from .kv import Connection, note, plural, report_skipped, run
from .restate_admin import RestateAdmin, RestateAdminError, restate_records, to_restate_value
from .transfer import STEP, Meter, finish, import_records, progress_bar

CONFIRM_SECONDS = 30.0
"""How long an export waits for Restate to show what it wrote (it applies edits through its
log, after answering 202)."""
RESTATE_CONCURRENCY = 16
"""State edits sent to Restate's admin API at a time."""


def import_from_restate(
    conn: Connection,
    admin_url: str,
    services: list[str] | None,
    keep_bytes: bool,
    on_conflict: str,
    dry_run: bool,
    concurrency: int,
) -> None:
    """Read Restate's state and import it into the store, as an import of a file does."""
    restate = RestateAdmin(admin_url)
    names: dict[str, list[str]] = {}

    async def go(admin: Admin) -> tuple[object, Meter]:
        store = admin.store
        records = restate_records(
            restate,
            services,
            store.serde,
            store.codec,
            keep_bytes=keep_bytes,
            retention_ms=int(store.workflow_retention * 1000),
        )
        return await import_records(admin, records, None, on_conflict, dry_run, concurrency, names)

    finish(conn, go, names)


def _digest(state: Mapping[str, bytes]) -> bytes:
    hasher = hashlib.sha256()
    for name in sorted(state):
        value = state[name]
        hasher.update(len(name.encode()).to_bytes(4, "big") + name.encode())
        hasher.update(len(value).to_bytes(4, "big") + value)
    return hasher.digest()


async def _confirm(restate: RestateAdmin, sent: dict[tuple[str, str], bytes]) -> int:
    """Read Restate's state back until every object sent shows what was sent (up to
    :data:`CONFIRM_SECONDS`); how many do not."""
    deadline = asyncio.get_running_loop().time() + CONFIRM_SECONDS
    services = sorted({service for service, _ in sent})
    while True:
        found: dict[tuple[str, str], dict[str, bytes]] = {}
        for service in services:
            async for page in restate.state_pages(service):
                for key, name, value in page:
                    if (service, key) in sent:
                        found.setdefault((service, key), {})[name] = value
        wrong = sum(_digest(found.get(obj, {})) != digest for obj, digest in sent.items())
        if not wrong or asyncio.get_running_loop().time() > deadline:
            return wrong
        await asyncio.sleep(0.2)


def export_to_restate(
    conn: Connection,
    admin_url: str,
    services: list[str] | None,
    keep_bytes: bool,
    concurrency: int,
) -> None:
    """Write the state of every object (of ``services``) into Restate's own."""
    restate = RestateAdmin(admin_url)
    skipped = SkippedKeys()

    async def go(admin: Admin) -> tuple[Meter, int]:
        store = admin.store
        kinds = await restate.keyed_services()
        sent: dict[tuple[str, str], bytes] = {}
        meter = Meter()
        export = store.export_objects(services, concurrency=concurrency)

        async def one(record: ObjectRecord) -> None:
            service, key = record.service, record.key
            if service not in kinds:
                raise RestateAdminError(
                    f"Restate at {admin_url} has no Virtual Object or Workflow named "
                    f"{service!r}: deploy and register it first (nothing of it was written)"
                )
            state = {
                name: value
                if keep_bytes
                else to_restate_value(value, store.serde, store.codec, service, key, name)
                for name, value in record.state.items()
            }
            await restate.set_state(service, key, state)
            sent[(service, key)] = _digest(state)

        with progress_bar(None) as progress:
            task = progress.add_task("writing to Restate", total=None, rate="")

            async def counted(record: ObjectRecord) -> None:
                await one(record)
                meter.tick()
                if meter.count % STEP == 0:
                    progress.update(task, completed=meter.count, rate=meter.rate())

            try:
                await bounded(export.__aiter__(), counted, min(concurrency, RESTATE_CONCURRENCY))
            finally:
                progress.update(task, completed=meter.count, rate=meter.rate())
        skipped.merge(export.skipped)
        return meter, await _confirm(restate, sent) if sent else 0

    meter, wrong = run(conn, go)
    report_skipped(skipped, conn)
    if wrong:
        from .kv import fail

        fail(
            f"wrote {plural(meter.count, 'object')} to Restate at {admin_url}, but "
            f"{plural(wrong, 'object')} did not show the state written within "
            f"{CONFIRM_SECONDS:g}s (changed meanwhile by an invocation?)",
            conn,
        )
    note(
        f"exported {plural(meter.count, 'object')} to Restate at {admin_url} in "
        f"{meter.seconds():.1f}s ({meter.rate()}); Restate shows each as written",
        conn,
    )
