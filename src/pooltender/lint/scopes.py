"""The definitions the rules share: request handler, worker / CLI command, long-running loop,
slow work, and the kind of file (application, test, migration, script).

They are written down for users in docs/rules/README.md ("Shared definitions"); a rule that
changes one of them changes every rule that reads it, which is the point of keeping them here.

* **Request handler**: a function under a Flask / Blueprint route decorator (``route``, the
  ``get``/``post``/... shortcuts, flask-smorest ``Blueprint.route``, Flask-Admin ``expose``),
  a method named after an HTTP verb of a class deriving from ``MethodView`` / ``View`` /
  Flask-RESTful / Flask-RESTX ``Resource`` (or a project base class whose name ends in
  ``Resource`` or ``View``, such as ``BaseResource``), or a ``before_request`` / ``after_request`` /
  ``teardown_*`` / ``errorhandler`` / ``context_processor`` hook. Flask-SQLAlchemy removes the
  session when the request's app context tears down, which rolls back an unfinished
  transaction and returns the connection.
* **Worker task**: a function under a task decorator of a worker whose processes outlive their
  tasks (Celery ``task`` / ``shared_task`` / ``periodic_task``, Dramatiq ``actor``, Huey
  ``db_task``; not RQ's ``job``, which runs in a forked process that exits with the job).
  **CLI command**: a function under a command decorator (click / Flask ``cli.command``,
  Flask-Script ``manager.command``).
* **Long-running loop**: a ``while`` whose condition is not a bounded counter (``while True``,
  ``while not stop.is_set()``, ``while self.running``; ``while i < n``, ``while items:`` and a
  search loop whose condition tests a local name the body reassigns, ``while token is not
  None: token = ...``, are bounded), a ``for`` over a consumer, queue, pub/sub,
  ``listen()`` / ``poll()`` / ``consume()`` iterator, or any loop whose body sleeps.
* **Slow work**: sleeping, HTTP calls, password hashing (bcrypt, Flask-Bcrypt, passlib,
  argon2, hashlib's KDFs, werkzeug, and methods named ``check_password`` /
  ``verify_password`` / ``set_password``), cloud storage transfers, subprocesses.
"""

from __future__ import annotations

import re
from pathlib import PurePath

import libcst as cst

from pooltender.lint.base import FileContext
from pooltender.lint.helpers import decorator_names, dotted, last_name, nearest_function, walk

HTTP_METHODS = frozenset({"get", "post", "put", "patch", "delete", "head", "options"})
_ROUTE_LAST = frozenset({"route", "expose", "expose_plugview"})
_HOOKS = frozenset(
    {
        "before_request",
        "after_request",
        "teardown_request",
        "teardown_appcontext",
        "before_app_request",
        "after_app_request",
        "teardown_app_request",
        "before_first_request",
        "errorhandler",
        "app_errorhandler",
        "context_processor",
        "app_context_processor",
    }
)
_VIEW_BASES = frozenset({"MethodView", "View", "Resource", "BaseView", "ModelView"})
# RQ's ``job`` is left out on purpose: RQ runs each job in a forked work horse that exits with
# it, so a failed session never outlives its job.
_WORKER_LAST = frozenset(
    {"task", "shared_task", "periodic_task", "actor", "db_task", "db_periodic_task"}
)
_CLI_LAST = frozenset({"command"})


def _decorated_by(func: cst.FunctionDef) -> list[tuple[str, str]]:
    """``(dotted name, last part)`` of each decorator."""
    return [(name, name.rsplit(".", 1)[-1]) for name in decorator_names(func)]


def enclosing_class(ctx: FileContext, func: cst.FunctionDef) -> cst.ClassDef | None:
    parent = ctx.parent(func)
    if isinstance(parent, cst.IndentedBlock):
        grand = ctx.parent(parent)
        if isinstance(grand, cst.ClassDef):
            return grand
    return None


def is_request_handler(ctx: FileContext, func: cst.FunctionDef) -> bool:
    """See the module docstring. Nested functions inherit it from their enclosing function."""
    current: cst.FunctionDef | None = func
    while current is not None:
        for name, last in _decorated_by(current):
            if last in _ROUTE_LAST or last in _HOOKS:
                return True
            if last in HTTP_METHODS and "." in name:  # app.get / bp.post shortcuts
                return True
        cls = enclosing_class(ctx, current)
        if cls is not None and current.name.value in HTTP_METHODS:
            bases = {last_name(b.value) or "" for b in cls.bases}
            if bases & _VIEW_BASES or any(b.endswith(("Resource", "View")) for b in bases):
                return True
        current = nearest_function(ctx, current)
    return False


def _decorated_with(ctx: FileContext, func: cst.FunctionDef, names: frozenset[str]) -> bool:
    current: cst.FunctionDef | None = func
    while current is not None:
        if any(last in names for _name, last in _decorated_by(current)):
            return True
        current = nearest_function(ctx, current)
    return False


def is_worker(ctx: FileContext, func: cst.FunctionDef) -> bool:
    """A task function (or a function nested in one)."""
    return _decorated_with(ctx, func, _WORKER_LAST)


def is_cli_command(ctx: FileContext, func: cst.FunctionDef) -> bool:
    """A CLI command function (or a function nested in one)."""
    return _decorated_with(ctx, func, _CLI_LAST)


# -- slow work --------------------------------------------------------------------------------

_SLEEP = frozenset({"time.sleep", "sleep", "asyncio.sleep", "gevent.sleep", "eventlet.sleep"})
_HTTP_VERBS = frozenset(
    {"get", "post", "put", "patch", "delete", "head", "options", "request", "send", "stream"}
)
_HTTP_MODULES = frozenset({"requests", "httpx", "urllib3", "aiohttp", "http_client"})
_HASH_FUNCS = frozenset(
    {
        "bcrypt.hashpw",
        "bcrypt.checkpw",
        "bcrypt.kdf",
        "hashlib.pbkdf2_hmac",
        "hashlib.scrypt",
        "pbkdf2_hmac",
        "hashpw",
        "checkpw",
        "generate_password_hash",
        "check_password_hash",
        "argon2.hash_password",
        "argon2.verify_password",
    }
)
_PASSWORD_METHODS = frozenset(
    {"check_password", "verify_password", "set_password", "hash_password", "check_password_hash"}
)
_HASHER = re.compile(
    r"(?i)(hasher|^_?ph$|pwd_context|pwd_ctx|crypt_context|password_context|passlib|argon2"
    r"|pbkdf2_sha256|sha256_crypt|sha512_crypt|bcrypt_sha256|bcrypt)"
)
_CLOUD_METHODS = frozenset(
    {
        "upload_file",
        "upload_fileobj",
        "download_file",
        "download_fileobj",
        "put_object",
        "get_object",
        "upload_from_filename",
        "upload_from_string",
        "upload_from_file",
        "download_to_filename",
        "download_as_bytes",
        "download_as_string",
        "download_as_text",
        "upload_blob",
        "download_blob",
    }
)
_SUBPROCESS = frozenset(
    {
        "subprocess.run",
        "subprocess.call",
        "subprocess.check_call",
        "subprocess.check_output",
        "subprocess.Popen",
        "os.system",
        "os.popen",
        "check_output",
        "check_call",
        "Popen",
    }
)


def slow_kind_of(name: str | None, attr: str | None, inner_callee: str | None) -> str | None:
    """:func:`slow_kind` on the parts of a call, so the libcst rules and the ``ast`` summaries
    share one definition: ``name`` the callee as a dotted name (None when it is not one),
    ``attr`` the called attribute, ``inner_callee`` the last name of a call the attribute is
    taken from (``PasswordHasher`` in ``PasswordHasher().hash(...)``)."""
    if name is None:
        if attr in ("hash", "verify") and inner_callee in ("PasswordHasher", "CryptContext"):
            return "password hashing"
        if attr in _CLOUD_METHODS:
            return "cloud storage call"
        if attr in _PASSWORD_METHODS:
            return "password hashing"
        return None
    if name in _SLEEP:
        return "sleep"
    head, _, verb = name.rpartition(".")
    root = name.split(".", 1)[0]
    if root in _HTTP_MODULES and verb in _HTTP_VERBS:
        return "HTTP call"
    if name in ("urlopen", "urllib.request.urlopen", "request.urlopen"):
        return "HTTP call"
    if name in _HASH_FUNCS or name.startswith("werkzeug.security."):
        return "password hashing"
    if verb in _PASSWORD_METHODS:
        return "password hashing"
    if head and verb in ("generate_password_hash", "check_password_hash"):
        return "password hashing"  # Flask-Bcrypt's bcrypt.generate_password_hash
    if verb in ("hash", "verify", "hashpw", "checkpw") and _HASHER.search(head.rsplit(".", 1)[-1]):
        return "password hashing"
    if verb in _CLOUD_METHODS and head:
        return "cloud storage call"
    if name in _SUBPROCESS:
        return "subprocess"
    return None


def slow_kind(call: cst.Call) -> str | None:
    """What makes ``call`` slow work ("sleep", "HTTP call", "password hashing", "cloud storage
    call", "subprocess"), or None. Syntactic: names as written (``requests.get``, ``ph.hash``)."""
    func = call.func
    attr = func.attr.value if isinstance(func, cst.Attribute) else None
    inner = None
    if isinstance(func, cst.Attribute) and isinstance(func.value, cst.Call):
        inner = last_name(func.value.func)
    return slow_kind_of(dotted(func), attr, inner)


def sleeps(call: cst.Call) -> bool:
    return slow_kind(call) == "sleep"


# -- long-running loops -----------------------------------------------------------------------

CONSUMER_WORDS = frozenset(
    {"consume", "consumer", "listen", "poll", "subscribe", "pubsub", "queue", "messages"}
)
CONSUMER_WORDS |= {"subscriber", "get_messages", "iter_messages", "receive", "stream"}


def _bounded(test: cst.BaseExpression) -> bool:
    """A counter comparison (``i < n``) or a collection drained by the loop (``while items:``)."""
    if isinstance(test, cst.Comparison):
        return any(
            isinstance(
                c.operator,
                cst.LessThan | cst.LessThanEqual | cst.GreaterThan | cst.GreaterThanEqual,
            )
            for c in test.comparisons
        )
    if isinstance(test, cst.Name):
        return test.value not in ("True",)
    if isinstance(test, cst.BooleanOperation):
        return _bounded(test.left) or _bounded(test.right)
    return False


def _consumer_iter(expr: cst.BaseExpression) -> bool:
    words = []
    node: cst.BaseExpression = expr
    if isinstance(node, cst.Call):
        name = last_name(node.func)
        if name == "iter" and node.args:  # iter(queue.get, None)
            return True
        if name == "count" and (dotted(node.func) or "").endswith("itertools.count"):
            return True
        words.append(name or "")
        node = node.func
    name = last_name(node)
    if name:
        words.append(name)
    return any(w.lower() in CONSUMER_WORDS for w in words if w)


def loop_sleeps(loop: cst.While | cst.For) -> bool:
    return any(isinstance(n, cst.Call) and sleeps(n) for n in walk(loop.body))


def _search_loop(loop: cst.While) -> bool:
    """The condition tests a plain local name that the body assigns (retry until unique)."""
    tested = {n.value for n in walk(loop.test) if isinstance(n, cst.Name)}
    tested -= {"True", "False", "None", "not"}
    if not tested or any(isinstance(n, cst.Call | cst.Attribute) for n in walk(loop.test)):
        return False
    for node in walk(loop.body):
        if isinstance(node, cst.AssignTarget | cst.AugAssign):
            target = node.target
            if isinstance(target, cst.Name) and target.value in tested:
                return True
    return False


def is_long_running(loop: cst.While | cst.For) -> bool:
    """See the module docstring."""
    if isinstance(loop, cst.While):
        if not _bounded(loop.test) and not _search_loop(loop):
            return True
    elif _consumer_iter(loop.iter):
        return True
    return loop_sleeps(loop)


def loop_description(loop: cst.While | cst.For) -> str:
    if isinstance(loop, cst.While):
        test = loop.test
        if isinstance(test, cst.Name) and test.value == "True":
            return "`while True` loop"
        if isinstance(test, cst.Integer):
            return f"`while {test.value}` loop"
        return "long-running `while` loop"
    return "long-running `for` loop"


# -- kinds of file ----------------------------------------------------------------------------

_TEST_DIRS = frozenset({"tests", "test", "testing"})
_MIGRATION_DIRS = frozenset({"migrations", "alembic", "migrate"})


def file_kind(path: str, source: str) -> str:
    """``"test"``, ``"migration"``, ``"script"`` or ``"app"``.

    Tests: a ``tests``/``test``/``testing`` directory, ``test_*.py``, ``*_test.py``,
    ``conftest.py``. Migrations: a ``migrations``/``alembic`` directory. Scripts: a module
    with a top-level ``if __name__ == "__main__":`` (a one-off process: an exception ends it).
    """
    parts = PurePath(path).parts
    name = parts[-1] if parts else ""
    dirs = {p.lower() for p in parts[:-1]}
    if dirs & _TEST_DIRS or name.startswith("test_") or name.endswith("_test.py"):
        return "test"
    if name == "conftest.py":
        return "test"
    if dirs & _MIGRATION_DIRS:
        return "migration"
    if re.search(r"(?m)^if\s+__name__\s*==\s*['\"]__main__['\"]\s*:", source):
        return "script"
    return "app"
