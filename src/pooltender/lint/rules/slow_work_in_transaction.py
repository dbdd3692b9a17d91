"""POL010 slow-work-in-transaction: slow work while ``db.session`` holds a connection,
directly or one call away.

## What it does
Within one function, follows ``db.session`` in source order: a query (``Model.query...``,
``db.session.query/execute/scalars/scalar/get/flush/merge/delete/refresh``, their dotted
forms, or a call to a project function that queries and leaves its transaction open) checks a
connection out; ``commit``/``rollback``/``remove``/``close`` gives it back. Between the two it
reports slow work (see docs/rules/README.md, "slow work"):

* sleeping: ``time.sleep``, ``sleep``, ``asyncio.sleep``, ``gevent.sleep``;
* HTTP: ``requests.*``, ``httpx.*``, ``urllib3``, ``aiohttp``, ``urlopen``;
* password hashing: bcrypt, Flask-Bcrypt (``bcrypt.generate_password_hash`` /
  ``check_password_hash``), passlib (``pwd_context.hash/verify``, ``sha256_crypt``...), argon2
  (``PasswordHasher().hash/verify``), ``hashlib.pbkdf2_hmac/scrypt``, werkzeug, and methods
  named ``check_password`` / ``verify_password`` / ``set_password`` / ``hash_password``;
* cloud storage transfers: boto3 ``upload_file`` / ``put_object`` / ``download_file``...,
  Google Cloud Storage ``upload_from_*`` / ``download_*``, Azure ``upload_blob`` /
  ``download_blob``;
* subprocesses: ``subprocess.*``, ``os.system``, ``os.popen``;
* a call to a project function that does any of these (one call away, from the function
  summaries of the linted tree).

A loop body is followed twice, so a polling loop that queries, sleeps and queries again is
reported even when the sleep comes first in the text. **The polling pattern**: a loop that
sleeps and calls a project helper which queries through ``db.session`` without ending the
transaction keeps one transaction (and its connection) open across every sleep; it is reported
at the loop, naming the helper.

## Why is this bad?
After the first query the session sits in a transaction on a checked-out connection until
commit or rollback. Sleeping, waiting on a remote service or hashing a password (tens to
hundreds of milliseconds by design) in that window holds the connection idle -- the MySQL
processlist fills with ``Sleep`` rows and the pool runs dry at a fraction of its throughput.

## Example
```python
def login(email, password):
    user = User.query.filter_by(email=email).first()
    PasswordHasher().verify(user.password_hash, password)
    user.last_login = now()
    db.session.commit()


def watch():
    while True:
        pending = pending_jobs()      # queries through db.session
        notify(pending)
        time.sleep(30)
```

## Use instead
```python
def login(email, password):
    user = User.query.filter_by(email=email).first()
    db.session.commit()  # or rollback(): hand the connection back first
    PasswordHasher().verify(user.password_hash, password)
    user.last_login = now()
    db.session.commit()


def watch():
    while True:
        pending = pending_jobs()
        notify(pending)
        db.session.remove()           # end the transaction before sleeping
        time.sleep(30)
```

## Fix safety
No fix: moving work across a transaction boundary changes what the transaction sees.

Test files and CLI commands are skipped (a test or a one-off command holding one connection
for a moment costs nothing: no one else waits for it).

## Known limits
``db.session.add()`` does not count as checking out a connection (it does not touch the
database). Branches are followed as if both ran, except that a branch ending in ``return`` or
``raise`` does not carry its state to the code after it. Helpers are followed one level deep and by
name; a name defined several times in the tree carries only what every definition does. Only
"ends the transaction" travels further (``obj.update()`` -> ``save()`` -> ``commit()``), and
for any receiver: it can only silence a finding.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import libcst as cst

from pooltender.lint.base import FileContext, Finding, iter_children, module_rule
from pooltender.lint.helpers import is_model_query, last_name, session_method, walk
from pooltender.lint.scopes import file_kind, is_cli_command, slow_kind
from pooltender.lint.summaries import FunctionSummary

CODE = "POL010"
NAME = "slow-work-in-transaction"
SUMMARY = (
    "sleep, HTTP call, password hashing, cloud upload or subprocess while db.session holds a "
    "connection (also one call away, and the polling pattern)"
)

_START = frozenset(
    {"query", "execute", "scalars", "scalar", "get", "get_one", "flush", "merge", "delete"}
) | {"refresh", "connection"}
_END = frozenset({"commit", "rollback", "remove", "close"})
# names too generic to carry a project summary (dict.get, list.append, obj.save ...)
_GENERIC = frozenset(
    {"get", "set", "add", "save", "delete", "update", "run", "call", "send", "append", "pop"}
) | {"put", "post", "patch", "remove", "close", "commit", "rollback", "execute", "query"}


@dataclass(frozen=True)
class _Event:
    kind: str  # "start", "end", "slow"; "save" / "restore" bracket a block that returns
    call: cst.Call
    loop: cst.While | cst.For | None
    what: str = ""
    helper: str | None = None


def _helper(call: cst.Call, ctx: FileContext) -> tuple[str, FunctionSummary] | None:
    """The project function ``call`` calls, when its receiver lets us say so: a bare name,
    ``self.`` / ``cls.``, or an imported module (``str.join`` on a literal is nobody's)."""
    func = call.func
    if isinstance(func, cst.Name):
        name = func.value
    elif isinstance(func, cst.Attribute) and isinstance(func.value, cst.Name):
        receiver = func.value.value
        if receiver not in ("self", "cls") and receiver not in ctx.imports:
            return None
        name = func.attr.value
    else:
        return None
    if name in _GENERIC:
        return None
    summary = ctx.summaries.get(name)
    return (name, summary) if summary is not None else None


def _classify(call: cst.Call, ctx: FileContext) -> _Event | None:
    method = session_method(call, ctx)
    if method in _END:
        return _Event("end", call, None)
    if method in _START:
        return _Event("start", call, None)
    if isinstance(call.func, cst.Attribute) and is_model_query(call.func.value, ctx):
        return _Event("start", call, None)
    kind = slow_kind(call)
    if kind is not None:
        return _Event("slow", call, None, kind)
    callee = last_name(call.func)
    ending = ctx.summaries.get(callee) if callee else None
    if ending is not None and ending.ends_transaction:
        # any receiver, even a generic name: treating a call as the end of the transaction
        # can only silence a finding (model.update() -> save() -> commit)
        return _Event("end", call, None, helper=callee)
    found = _helper(call, ctx)
    if found is not None:
        name, summary = found
        if summary.slow is not None:
            return _Event("slow", call, None, f"{summary.slow} (in {name}())", name)
        if summary.holds_transaction:
            return _Event("start", call, None, helper=name)
    return None


def _terminates(block: cst.CSTNode) -> bool:
    """A block whose last statement returns or raises: its effects do not reach what follows."""
    if not isinstance(block, cst.IndentedBlock) or not block.body:
        return False
    last = block.body[-1]
    return isinstance(last, cst.SimpleStatementLine) and any(
        isinstance(s, cst.Return | cst.Raise) for s in last.body
    )


_SAVE, _RESTORE = cst.Pass(), cst.Pass()  # markers on the walk's stack (identity-compared)


def _events(node: cst.CSTNode, ctx: FileContext) -> Iterator[_Event]:
    """Events in evaluation-ish order, each with its innermost loop; loop bodies twice. A block
    that ends in ``return``/``raise`` is bracketed by "save"/"restore" events, so the state it
    leaves does not flow into the statements after it."""
    stack: list[tuple[cst.CSTNode, cst.While | cst.For | None]] = [(node, None)]
    while stack:
        current, loop = stack.pop()
        if current is _SAVE or current is _RESTORE:
            yield _Event("save" if current is _SAVE else "restore", cst.Call(cst.Name("_")), loop)
            continue
        if isinstance(current, cst.FunctionDef | cst.Lambda | cst.ClassDef) and current is not node:
            continue
        if current is not node and _terminates(current):
            stack.append((_RESTORE, loop))
            stack.extend((c, loop) for c in reversed(list(iter_children(current))))
            stack.append((_SAVE, loop))
            continue
        if isinstance(current, cst.Call):
            event = _classify(current, ctx)
            if event is not None:
                yield _Event(event.kind, event.call, loop, event.what, event.helper)
        children = list(iter_children(current))
        if isinstance(current, cst.While | cst.For):
            body = current.body
            rest = [c for c in children if c is not body and c is not current.orelse]
            # header first, then the body twice (the second pass models the next iteration)
            ordered: list[tuple[cst.CSTNode, cst.While | cst.For | None]] = [
                (c, loop) for c in rest
            ]
            ordered += [(body, current), (body, current)]
            if current.orelse is not None:
                ordered.append((current.orelse, loop))
            stack.extend(reversed(ordered))
        else:
            stack.extend((c, loop) for c in reversed(children))


def check(ctx: FileContext) -> Iterator[Finding]:
    if file_kind(ctx.path, ctx.source) == "test":
        return  # a test holding a connection for a moment costs nothing
    for func in ctx.nodes(cst.FunctionDef):
        if is_cli_command(ctx, func):
            continue  # one process, no concurrency: nobody waits for that connection
        calls = [n for n in walk(func.body) if isinstance(n, cst.Call)]
        classified = [e for e in (_classify(c, ctx) for c in calls) if e is not None]
        if not any(e.kind == "start" for e in classified) or not any(
            e.kind == "slow" for e in classified
        ):
            continue  # nothing to hold or nothing slow: skip the loop-doubling walk
        holding: _Event | None = None
        saved: list[_Event | None] = []
        reported: set[int] = set()
        for event in _events(func.body, ctx):
            if event.kind == "save":
                saved.append(holding)
                continue
            if event.kind == "restore":
                holding = saved.pop() if saved else holding
                continue
            if event.kind == "start":
                holding = holding or event
                continue
            if event.kind == "end":
                holding = None
                continue
            if holding is None:
                continue
            loop = event.loop
            if holding.helper is not None and loop is not None and event.what == "sleep":
                if id(loop) not in reported:
                    reported.add(id(loop))
                    yield Finding(
                        CODE,
                        loop,
                        f"polling loop sleeps while the transaction opened by "
                        f"{holding.helper}() (it queries through db.session and does not end "
                        "the transaction) holds a connection across every sleep: call "
                        "db.session.remove() (or commit/rollback) before sleeping",
                    )
                continue
            if id(event.call) in reported or (loop is not None and id(loop) in reported):
                continue
            reported.add(id(event.call))
            since = ctx.position(holding.call).start.line
            via = f" via {holding.helper}()" if holding.helper else ""
            in_loop = " in a polling loop" if loop is not None else ""
            yield Finding(
                CODE,
                event.call,
                f"{event.what}{in_loop} while db.session holds a connection (query{via} on line "
                f"{since}, no commit/rollback since): end the transaction before the slow work",
            )


_HOLD_WORDS = ("session", "query")
_SLOW_WORDS = (
    "sleep",
    "requests",
    "httpx",
    "urllib3",
    "aiohttp",
    "urlopen",
    "hash",
    "Hash",
    "verify",
    "bcrypt",
    "pbkdf2",
    "scrypt",
    "password",
    "upload",
    "download",
    "_object",
    "_blob",
    "subprocess",
    "Popen",
    "system",
    "popen",
    "check_output",
    "check_call",
)


def helper_triggers(
    summaries: Mapping[str, FunctionSummary],
) -> tuple[tuple[str, ...], ...]:
    """A helper that holds a transaction stands in for ``session``; a slow one for ``sleep``."""
    holders = tuple(
        f"{n}(" for n, s in summaries.items() if s.holds_transaction and n not in _GENERIC
    )
    slow = tuple(f"{n}(" for n, s in summaries.items() if s.slow and n not in _GENERIC)
    return (_HOLD_WORDS + holders, _SLOW_WORDS + slow)


RULE = module_rule(
    __name__,
    triggers=(_HOLD_WORDS, _SLOW_WORDS),
    helper_triggers=helper_triggers,
)
