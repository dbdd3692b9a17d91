"""Bulk code generation and CSV export: the post-mortem's "bulk operations", done right.

The post-mortem recommended ``bulk_insert_mappings`` and a ``with db.session.begin():``
loop of ``session.add``; the first holds every row in memory, the second builds one ORM
object per code. Here N codes (1 to 1,000,000) are written as follows:

* one transaction (:func:`coupons.db.transaction`): all N codes or none;
* chunks of ``chunk_size`` codes (default 2,000): draw a chunk with :mod:`secrets`,
  de-duplicate it in memory, ask the database which of its codes already exist
  (``SELECT code FROM coupons WHERE code IN (...)``, which also sees the chunks already
  inserted by this transaction), redraw those, then write the chunk with one
  multi-row ``INSERT`` (``session.execute(insert(Coupon), rows)``: executemany, which
  mysqlclient rewrites to multi-row VALUES and SQLite/psycopg run as a prepared batch);
* memory is one chunk whatever N: no code is kept once its chunk is written, because the
  database, not a Python set, is the record of what exists.

Each chunk is written inside a SAVEPOINT. A concurrent writer can commit a code after our
collision check (on MariaDB our REPEATABLE READ snapshot does not even show it); the
unique index then refuses the chunk, the savepoint is rolled back, the codes now taken
are found with a locking read (which sees the latest committed rows on every database),
redrawn, and the chunk is written again. Nothing else is retried here; deadlock victims
are retried by :func:`coupons.db.transaction` (which runs the whole generation again).

The space rule (why generation always terminates quickly): a pattern with ``s`` slots
over an alphabet of ``a`` characters has ``a**s`` codes. A request for N codes is refused
up front (422 ``pattern_space_too_small``) unless ``a**s >= SPACE_FACTOR * (N + E)``
where E is the number of codes already stored that fit the pattern's shape (counted
only when the space is small enough for E to matter). Then at every draw at most
1/SPACE_FACTOR = 10 % of the space is taken, a draw collides with probability <= 0.1, a
chunk needs about 11 % extra draws, and needing more than ``MAX_REDRAW_ROUNDS`` rounds
has probability <= 0.1**20: in practice never, and if concurrent generators eat the
space anyway the request fails cleanly with 422 ``pattern_space_exhausted``.

This module imports no Flask: the HTTP view and the CLI command both call it inside an
app context.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import io
import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError

from coupons.db import db, read, transaction
from coupons.errors import Unprocessable
from coupons.models import Campaign, Coupon, utcnow
from coupons.services.rules import CODE_ALPHABET, campaign_not_found

DEFAULT_ALPHABET = CODE_ALPHABET
"""The service's one code alphabet (:data:`coupons.services.rules.CODE_ALPHABET`)."""
DEFAULT_PATTERN = "####-####-####"
SLOT = "#"
MAX_CODE_LENGTH = 64  # the width of coupons.code
MIN_COUNT = 1
MAX_COUNT = 1_000_000
SPACE_FACTOR = 10
CHUNK_SIZE = 2_000
EXPORT_PAGE_SIZE = 5_000
MAX_REDRAW_ROUNDS = 20
CSV_HEADER = ("code", "max_uses", "use_count", "created_at")

_IN_BATCH = 1_000  # bound parameters per IN (...) list; every driver takes this easily
_INSERT_ATTEMPTS = 5  # a chunk refused by the unique index is redrawn and retried this often
# The existing-codes count is skipped when the space is so large that even this many stored
# codes could not break the space rule; it is only worth a scan for small patterns.
_ROW_CEILING = 10**10
_LITERAL = re.compile(r"[A-Z0-9-]*")
_PATTERN_CHARS = re.compile(r"[A-Z0-9#-]*")


class InvalidPattern(Unprocessable, ValueError):
    """A code pattern, prefix or alphabet that cannot produce valid codes (422)."""

    code = "invalid_pattern"


def _random_bytes(n: int) -> bytes:
    """``n`` random bytes from the OS CSPRNG: the only entropy source (tests replace it)."""
    return secrets.token_bytes(n)


@dataclass(frozen=True)
class CodePattern:
    """A code template: ``#`` is one random character of ``alphabet``, the rest literal.

    Build with :meth:`parse`. ``template`` is the prefix plus the pattern, upper-cased;
    codes are at most :data:`MAX_CODE_LENGTH` characters of A-Z, 0-9 and ``-`` and
    start with a letter or digit (a leading ``-`` would be read as a formula by
    spreadsheets opening the CSV export).
    """

    template: str
    alphabet: str = DEFAULT_ALPHABET
    slots: int = field(init=False)
    _format: str = field(init=False, repr=False)
    _table: bytes = field(init=False, repr=False)
    _rejected: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        template = self.template
        if not template:
            raise InvalidPattern("the pattern is empty; use e.g. SPRING-####-####")
        if len(template) > MAX_CODE_LENGTH:
            raise InvalidPattern(
                f"codes of this pattern would be {len(template)} characters long; "
                f"the most is {MAX_CODE_LENGTH}"
            )
        if not _PATTERN_CHARS.fullmatch(template):
            bad = sorted({c for c in template if not _PATTERN_CHARS.fullmatch(c)})
            raise InvalidPattern(
                f"the pattern may contain only A-Z, 0-9, '-' and '#' (one random "
                f"character); found {''.join(bad)!r}"
            )
        if SLOT not in template:
            raise InvalidPattern(
                f"the pattern {template!r} has no '#': every code would be the same"
            )
        if template[0] == "-":
            raise InvalidPattern("a code must start with a letter, a digit or '#', not '-'")
        alphabet = self.alphabet
        if len(alphabet) < 2 or len(set(alphabet)) != len(alphabet):
            raise InvalidPattern("the alphabet needs at least two distinct characters")
        if not _LITERAL.fullmatch(alphabet) or "-" in alphabet:
            raise InvalidPattern("the alphabet may contain only A-Z and 0-9")
        object.__setattr__(self, "slots", template.count(SLOT))
        object.__setattr__(self, "_format", template.replace(SLOT, "{}"))
        base = len(alphabet)
        limit = 256 - 256 % base
        table = bytes(ord(alphabet[b % base]) for b in range(256))
        object.__setattr__(self, "_table", table)
        object.__setattr__(self, "_rejected", bytes(range(limit, 256)))

    @classmethod
    def parse(
        cls, pattern: str, prefix: str | None = None, alphabet: str = DEFAULT_ALPHABET
    ) -> CodePattern:
        """Parse ``pattern`` (case-insensitive), prepending ``prefix`` literally.

        ``prefix`` may not contain ``#`` (it is literal text; put a separator such as
        ``-`` in it yourself). Raises :class:`InvalidPattern` with the reason.
        """
        pattern = pattern.strip().upper()
        prefix = (prefix or "").strip().upper()
        if SLOT in prefix:
            raise InvalidPattern("the prefix is literal text and may not contain '#'")
        if not _LITERAL.fullmatch(prefix):
            raise InvalidPattern("the prefix may contain only A-Z, 0-9 and '-'")
        return cls(template=prefix + pattern, alphabet=alphabet.upper())

    @property
    def space(self) -> int:
        """How many distinct codes the pattern can produce."""
        return int(len(self.alphabet) ** self.slots)

    @property
    def like(self) -> str:
        """A SQL LIKE pattern matching every code of this shape (``_`` per slot)."""
        return self.template.replace(SLOT, "_")

    def draw(self) -> str:
        """One code, uniformly random over the whole space."""
        return self.draw_many(1)[0]

    def draw_many(self, n: int) -> list[str]:
        """``n`` codes, each uniformly random over the whole space (duplicates possible).

        Each slot takes one byte from the OS CSPRNG, mapped to ``alphabet[b % a]``;
        bytes >= ``256 - 256 % a`` (the largest multiple of ``a`` <= 256) are dropped (rejection
        sampling), so every character is exactly equally likely. The entropy for a whole
        chunk comes from one ``secrets.token_bytes`` call and is mapped with
        ``bytes.translate``: one system call per chunk instead of one per code.
        """
        need = n * self.slots
        chars = ""
        while len(chars) < need:
            missing = need - len(chars)
            chunk = _random_bytes(missing + missing // 8 + 8)
            chars += chunk.translate(self._table, self._rejected).decode("ascii")
        s = self.slots
        return [self._format.format(*chars[i * s : i * s + s]) for i in range(n)]

    def matches(self, code: str) -> bool:
        """Whether ``code`` could have been drawn from this pattern."""
        if len(code) != len(self.template):
            return False
        return all(
            (c in self.alphabet) if t == SLOT else (c == t)
            for c, t in zip(code, self.template, strict=True)
        )


@dataclass(frozen=True)
class GenerationResult:
    """What :func:`generate_codes` wrote.

    ``id_floor``: every generated coupon has an id above it (the campaign's largest
    coupon id before generation), so ``open_codes_export(campaign_id, after_id=id_floor)``
    exports this batch (plus any code of the campaign others add meanwhile).
    """

    campaign_id: int
    generated: int
    sample: tuple[str, ...]
    pattern: str
    id_floor: int


def check_count(count: int) -> None:
    """1 <= count <= MAX_COUNT, else 422 ``invalid_count``."""
    if not MIN_COUNT <= count <= MAX_COUNT:
        raise Unprocessable(
            f"count must be between {MIN_COUNT} and {MAX_COUNT:,}, got {count:,}",
            code="invalid_count",
        )


def check_space(pattern: CodePattern, count: int, existing: int = 0) -> None:
    """Refuse (422 ``pattern_space_too_small``) unless space >= SPACE_FACTOR * (count + existing).

    See the module docstring for why this bound makes the random draw terminate fast.
    """
    required = SPACE_FACTOR * (count + existing)
    if pattern.space >= required:
        return
    taken = f" plus the {existing:,} existing codes of that shape" if existing else ""
    raise Unprocessable(
        f"the pattern {pattern.template!r} allows only {pattern.space:,} codes "
        f"({len(pattern.alphabet)}^{pattern.slots}); {count:,} codes{taken} need a space of "
        f"at least {required:,} ({SPACE_FACTOR}x) so that random codes rarely collide; "
        "add '#' characters to the pattern",
        code="pattern_space_too_small",
        space=pattern.space,
        required=required,
        existing=existing,
    )


def _existing_codes(codes: Iterable[str], *, locking: bool = False) -> set[str]:
    """Which of ``codes`` are stored already, in IN lists of at most ``_IN_BATCH``.

    ``locking`` reads the latest committed rows (FOR SHARE) instead of the transaction's
    snapshot; used only after the unique index refused a chunk.
    """
    batch = list(codes)
    found: set[str] = set()
    for start in range(0, len(batch), _IN_BATCH):
        stmt = select(Coupon.code).where(Coupon.code.in_(batch[start : start + _IN_BATCH]))
        if locking:
            stmt = stmt.with_for_update(read=True)
        # MariaDB compares case-insensitively; report the codes as we spelled them.
        found.update(code.upper() for code in db.session.scalars(stmt))
    return found


def _draw_chunk(pattern: CodePattern, size: int, avoid: set[str] | None = None) -> set[str]:
    """``size`` distinct codes, none of them stored yet nor in ``avoid``."""
    avoid = avoid or set()
    accepted: set[str] = set()
    for _ in range(MAX_REDRAW_ROUNDS):
        fresh: set[str] = set()
        while len(accepted) + len(fresh) < size:
            for code in pattern.draw_many(size - len(accepted) - len(fresh)):
                if code not in accepted and code not in avoid:
                    fresh.add(code)
        accepted |= fresh - _existing_codes(fresh)
        if len(accepted) == size:
            return accepted
    raise Unprocessable(
        f"could not find {size:,} unused codes of the pattern {pattern.template!r} after "
        f"{MAX_REDRAW_ROUNDS} rounds of redrawing; the pattern's space is nearly used up",
        code="pattern_space_exhausted",
    )


def _insert_chunk(pattern: CodePattern, codes: set[str], row: dict[str, Any]) -> list[str]:
    """Insert one row per code in a SAVEPOINT; redraw codes a concurrent writer took.

    Returns the codes written (``codes`` unless some had to be replaced).
    """
    for _ in range(_INSERT_ATTEMPTS):
        rows = [{**row, "code": code} for code in codes]
        try:
            with db.session.begin_nested():
                db.session.execute(insert(Coupon), rows)
            return [r["code"] for r in rows]
        except IntegrityError:
            taken = _existing_codes(codes, locking=True)
            if not taken:
                raise  # not a code collision (e.g. the campaign was deleted meanwhile)
            codes = (codes - taken) | _draw_chunk(pattern, len(taken), avoid=codes)
    raise Unprocessable(
        "concurrent writers kept taking the codes drawn for this request; try again",
        code="pattern_space_exhausted",
    )


def _require_campaign(campaign_id: int) -> None:
    found = db.session.scalar(select(Campaign.id).where(Campaign.id == campaign_id))
    if found is None:
        raise campaign_not_found(campaign_id)


def generate_codes(
    campaign_id: int,
    count: int,
    *,
    pattern: str | CodePattern = DEFAULT_PATTERN,
    prefix: str | None = None,
    max_uses: int | None = None,
    chunk_size: int = CHUNK_SIZE,
    on_progress: Callable[[int, int], None] | None = None,
) -> GenerationResult:
    """Write ``count`` new unique codes for a campaign, all in one transaction, or none.

    Checks, in order, before anything is written: the pattern (422 ``invalid_pattern``),
    the count (422 ``invalid_count``), ``max_uses`` (422 ``invalid_max_uses``), the
    campaign (404 ``campaign_not_found``) and the space rule (422 ``pattern_space_too_small``).

    ``on_progress(done, total)`` is called after each chunk is written (inside the
    transaction: ``done`` restarts from 0 if a deadlock makes the transaction run
    again). An exception from it rolls the whole generation back.
    Must be called inside an app context with no pending changes in ``db.session``.
    """
    if isinstance(pattern, str):
        pattern = CodePattern.parse(pattern, prefix)
    elif prefix:
        raise InvalidPattern("give the prefix to CodePattern.parse, not with a parsed pattern")
    check_count(count)
    if max_uses is not None and max_uses < 1:
        raise Unprocessable(
            f"max_uses must be at least 1 (or omitted), got {max_uses}", code="invalid_max_uses"
        )
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    check_space(pattern, count)  # the cheap check first, before any database work
    code_pattern = pattern

    def run() -> GenerationResult:
        _require_campaign(campaign_id)
        if code_pattern.space < SPACE_FACTOR * (count + _ROW_CEILING):
            existing = db.session.scalar(
                select(func.count()).select_from(Coupon).where(Coupon.code.like(code_pattern.like))
            )
            check_space(code_pattern, count, int(existing or 0))
        id_floor = db.session.scalar(
            select(func.max(Coupon.id)).where(Coupon.campaign_id == campaign_id)
        )
        row: dict[str, Any] = {
            "campaign_id": campaign_id,
            "max_uses": max_uses,
            "use_count": 0,
            "created_at": utcnow(),
        }
        done = 0
        sample: list[str] = []
        while done < count:
            size = min(chunk_size, count - done)
            written = _insert_chunk(code_pattern, _draw_chunk(code_pattern, size), row)
            if len(sample) < 5:
                sample.extend(sorted(written)[: 5 - len(sample)])
            done += size
            if on_progress is not None:
                on_progress(done, count)
        return GenerationResult(
            campaign_id=campaign_id,
            generated=done,
            sample=tuple(sample),
            pattern=code_pattern.template,
            id_floor=int(id_floor or 0),
        )

    return transaction(run)


def open_codes_export(
    campaign_id: int, *, after_id: int = 0, page_size: int = EXPORT_PAGE_SIZE
) -> Iterator[str]:
    """Check the campaign exists (404 ``campaign_not_found``) and return the CSV of its codes.

    The check runs now, so an HTTP view can still answer 404; the rows are read only as
    the returned iterator is consumed. It yields the header line, then one string per
    page of ``page_size`` rows ``code,max_uses,use_count,created_at`` (ISO 8601, UTC)
    in id order, of the coupons with id > ``after_id``.

    Each page is a short read of its own: keyset ``WHERE id > :last ORDER BY id LIMIT n``,
    then the read transaction is ended so the connection goes back to the pool *before*
    the page is handed to a (possibly slow) client. A consumer that stops early holds no
    connection; memory is one page whatever the campaign's size. Pages are separate
    snapshots: rows committed during the export appear if their id is past the cursor.
    Must be called inside an app context (for a Flask streaming response: wrap it in
    ``stream_with_context``) with no pending changes in ``db.session``.
    """
    session = db.session()
    if session.new or session.dirty or session.deleted:
        raise RuntimeError("open_codes_export() needs a db.session without pending changes")
    if page_size < 1:
        raise ValueError("page_size must be at least 1")
    read(lambda: _require_campaign(campaign_id))  # ended: nothing held until the first page
    return _export_pages(campaign_id, after_id, page_size)


def _export_pages(campaign_id: int, after_id: int, page_size: int) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_HEADER)
    yield _drain(buffer)
    last_id = after_id
    while True:
        stmt = (
            select(Coupon.id, Coupon.code, Coupon.max_uses, Coupon.use_count, Coupon.created_at)
            .where(Coupon.campaign_id == campaign_id, Coupon.id > last_id)
            .order_by(Coupon.id)
            .limit(page_size)
        )
        # The page is in memory once read() returns: the connection is back in the pool.
        rows = read(functools.partial(_page, stmt))
        if not rows:
            return
        for row in rows:
            writer.writerow(
                (
                    row.code,
                    "" if row.max_uses is None else row.max_uses,
                    row.use_count,
                    _iso(row.created_at),
                )
            )
        yield _drain(buffer)
        if len(rows) < page_size:
            return
        last_id = rows[-1].id


def _page(stmt: Any) -> Sequence[Any]:
    return db.session.execute(stmt).all()


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat()


def _drain(buffer: io.StringIO) -> str:
    text = buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()
    return text
