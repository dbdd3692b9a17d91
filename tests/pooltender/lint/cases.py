"""Rule test tables (after sqlfluff's std_rule_cases): per rule, sources that must fail, sources
that must pass, and fixes as (before, after, needs --unsafe-fixes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pooltender.lint.versions import Pins


@dataclass(frozen=True)
class RuleCases:
    """``unchanged``: sources that ``--fix --unsafe-fixes`` must leave exactly as they are
    (whether or not they are reported). ``config``: LintConfig changes for the whole table
    (``pins`` for a pinned SQLAlchemy, ``db_names``)."""

    fail: list[str]
    ok: list[str]
    fixed: list[tuple[str, str, bool]] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)


CASES: dict[str, RuleCases] = {}

CASES["POL001"] = RuleCases(
    fail=[
        "def f():\n    s = Session(bind=db.engine)\n    s.commit()\n",
        "session = Session(db.engine)\n",
        "def f():\n    s = sessionmaker(bind=db.engine)()\n",
        "from flask_sqlalchemy import SQLAlchemy\ns = sessionmaker()()\n",
        "Factory = scoped_session(sessionmaker(bind=db.engine))\n",
        "def f():\n    s = db.create_scoped_session()\n",
        "def f():\n    with Session(bind=db.get_engine()) as s:\n        s.add(x)\n",
    ],
    ok=[
        "def f():\n    db.session.add(x)\n",
        # plain SQLAlchemy (no Flask-SQLAlchemy in sight) is not this rule's business
        "engine = create_engine(URL)\nSession = sessionmaker(bind=engine)\n",
        "def f():\n    s = sessionmaker(bind=engine)()\n",
        "def f():\n    s = Session(bind=other_engine)\n",
    ],
    fixed=[
        (
            "def expire(code):\n"
            "    session = Session(bind=db.engine)\n"
            "    session.query(Coupon).filter_by(code=code).update({'x': 1})\n"
            "    session.commit()\n"
            "    session.close()\n",
            "def expire(code):\n"
            "    db.session.query(Coupon).filter_by(code=code).update({'x': 1})\n"
            "    db.session.commit()\n",
            True,
        ),
        (
            "def f():\n"
            "    s = sessionmaker(bind=db.engine)()\n"
            "    try:\n"
            "        s.add(x)  # keep me\n"
            "        s.commit()\n"
            "    finally:\n"
            "        s.close()\n",
            "def f():\n"
            "    try:\n"
            "        db.session.add(x)  # keep me\n"
            "        db.session.commit()\n"
            "    finally:\n"
            "        pass\n",
            True,
        ),
    ],
)

# close() before slow or long-lived work (issue 11): never reported, never removed
_SSE = (
    "def subscribe():\n    @stream_with_context\n    def gen():\n"
    "        for event in events.subscribe():\n            yield str(event)\n\n"
    "    # hand the connection back before a stream that lasts for hours\n"
    "    db.session.close()\n    return Response(gen(), mimetype='text/event-stream')\n"
)
_MAIL = (
    "def reset_password(user, password):\n    user.password = password\n"
    "    db.session.commit()\n    db.session.close()\n"
    "    email.password_change_alert(user.email)\n    return Users.query.count()\n"
)
_DISPOSE = "def shutdown():\n    db.session.close()\n    db.engine.dispose()\n"
_END_OF_WORK = (
    "def get_user():\n    user = db.session.get(User, 1)\n    db.session.close()\n    return user\n"
)

# Issue 11 changed POL002's intent: a close() at the end of a unit of work (or before slow or
# long-lived work) is deliberate and no longer reported; only redundant ones and closes that
# cut a unit of work in two are.
CASES["POL002"] = RuleCases(
    fail=[
        "def teardown(exc):\n    db.session.remove()\n    db.session.close()\n",
        "def teardown(exc):\n    db.session.close()\n    db.session.remove()\n",
        "def rename(uid, name):\n    user = db.session.get(User, uid)\n    db.session.close()\n"
        "    user.name = name\n    db.session.commit()\n",
        "def f():\n    a = A.query.first()\n    db.session.close()\n    return B.query.all()\n",
        "def f():\n    if x:\n        db.session.close()\n    return User.query.all()\n",
        "import models\n\ndef f():\n    models.db.session.close()\n    models.User.query.all()\n",
    ],
    ok=[
        "def teardown(exc):\n    db.session.remove()\n",
        "def f():\n    f.close()\n    conn.close()\n    session.close()\n",
        "def f():\n    self.db.session.close()\n    self.db.session.commit()\n",
        _END_OF_WORK,
        "x = [db.session.close()]\n",
        _SSE,
        _MAIL,
        _DISPOSE,
        "def run():\n    while True:\n        process(Job.query.first())\n"
        "        db.session.close()\n        time.sleep(5)\n",
        "def f():\n    db.session.close()\n    time.sleep(10)\n    return A.query.all()\n",
        "def f():\n    db.session.close()\n    r = requests.get(u)\n    db.session.add(X(r))\n",
        "def f():\n    db.session.close()\n    subprocess.run(cmd)\n    db.session.commit()\n",
        "def f():\n    db.session.close()\n    send_email(to)\n    db.session.commit()\n",
        "def login():\n    if bad:\n        db.session.close()\n        return render()\n"
        "    return User.query.first()\n",
        "def f():\n    db.session.close()\n    for m in consumer:\n"
        "        handle(M.query.get(m))\n",
    ],
    fixed=[
        (
            "def teardown(exc):\n    db.session.remove()\n    db.session.close()\n",
            "def teardown(exc):\n    db.session.remove()\n",
            False,
        ),
        (
            "def teardown(exc):\n    db.session.close()\n    db.session.remove()\n",
            "def teardown(exc):\n    db.session.remove()\n",
            False,
        ),
        (
            "def f():\n    try:\n        work()\n    finally:\n"
            "        db.session.remove(); db.session.close()\n",
            "def f():\n    try:\n        work()\n    finally:\n        db.session.remove()\n",
            False,
        ),
        (
            "def f():\n    a = A.query.first()\n"
            "    db.session.close()  # not needed!\n    return B.query.all()\n",
            "def f():\n    a = A.query.first()\n    return B.query.all()\n",
            True,
        ),
        (
            "def f():\n    if x:\n        db.session.close()\n    return A.query.all()\n",
            "def f():\n    if x:\n        pass\n    return A.query.all()\n",
            True,
        ),
    ],
    unchanged=[
        _SSE,
        _MAIL,
        _DISPOSE,
        _END_OF_WORK,
    ],
)

# Issue 11 changed POL003's intent: a commit in a plain helper or a request handler is no longer
# a finding (teardown rolls back); swallowed errors, loops, workers and CLI commands are.
CASES["POL003"] = RuleCases(
    fail=[
        # the swallowed-error pattern: the loop carries on with a failed session
        "def seed(rows):\n    for row in rows:\n        try:\n"
        "            db.session.add(Award(**row))\n            db.session.flush()\n"
        "        except Exception:\n            pass\n",
        "def f():\n    try:\n        db.session.commit()\n    except Exception:\n        log()\n",
        "def f():\n    try:\n        db.session.commit()\n    except:\n        log()\n",
        "def f():\n    try:\n        db.session.flush()\n"
        "    except (ValueError, sa.exc.IntegrityError):\n        counter += 1\n",
        # a request handler that swallows and carries on to render (and query) is a bug too
        "@bp.route('/tag', methods=['POST'])\ndef tag():\n    try:\n        db.session.commit()\n"
        "    except IntegrityError:\n        flash('exists')\n"
        "    return render_template('t.html')\n",
        # long-running loops
        "def run(stop):\n    while not stop.is_set():\n        job = next_job()\n"
        "        job.done = True\n        db.session.commit()\n",
        "def run():\n    while True:\n        db.session.commit()\n",
        "def consume(consumer):\n    for message in consumer:\n"
        "        db.session.add(Event(message))\n        db.session.commit()\n",
        "def refresh():\n    for _ in range(10):\n        time.sleep(1)\n"
        "        db.session.commit()\n",
        # workers and CLI commands
        "@celery.task\ndef expire():\n    Coupon.query.delete()\n    db.session.commit()\n",
        "@shared_task(bind=True)\ndef expire(self):\n    db.session.commit()\n",
        "@app.cli.command('watch')\ndef watch():\n    while True:\n        db.session.commit()\n"
        "        time.sleep(1)\n",
        # a dotted receiver resolved from the imports
        "import models\n\n\n@celery.task\ndef t():\n    models.db.session.commit()\n",
        "@click.command()\ndef load(rows):\n    for r in rows:\n        try:\n"
        "            db.session.add(r)\n            db.session.flush()\n"
        "        except IntegrityError:\n            pass\n",
        "from app import extensions\n\ndef f():\n    try:\n"
        "        extensions.db.session.commit()\n    except Exception:\n        pass\n",
    ],
    ok=[
        "def f(c):\n    c.used = True\n    db.session.commit()\n",
        "def f():\n    with app.app_context():\n        db.session.commit()\n",
        "@bp.route('/r', methods=['POST'])\ndef r():\n    db.session.add(x)\n"
        "    db.session.commit()\n    return ''\n",
        "@app.post('/r')\ndef r():\n    db.session.commit()\n",
        "class V(MethodView):\n    def post(self):\n        db.session.commit()\n",
        "class Things(Resource):\n    def delete(self, id):\n"
        "        for t in Thing.query.all():\n            db.session.delete(t)\n"
        "            db.session.commit()\n",
        "@app.before_request\ndef track():\n    db.session.commit()\n",
        "@app.route('/')\ndef f():\n    try:\n        db.session.commit()\n"
        "    except IntegrityError:\n        return 'dup', 409\n",
        "def f():\n    try:\n        db.session.flush()\n    except ValueError:\n        pass\n",
        "def main():\n    for row in rows:\n        db.session.add(row)\n"
        "        db.session.commit()\n\n\nif __name__ == '__main__':\n    main()\n",
        # CLI commands: a failed commit raises and ends the process
        "@app.cli.command('seed')\ndef seed():\n    db.session.add(x)\n    db.session.commit()\n",
        "@click.command()\n@click.option('--n')\ndef seed(n):\n    db.session.commit()\n",
        "@rq.job\ndef record(e):\n    db.session.add(e)\n    db.session.commit()\n",
        "@click.command()\ndef invite():\n    try:\n        db.session.commit()\n"
        "    except IntegrityError as e:\n        print(e)\n",
        "@manager.command\ndef create():\n    try:\n        db.session.commit()\n"
        "    except Exception as e:\n        print(e)\n        exit(1)\n",
        "class DataSource(BaseResource):\n    def post(self):\n        try:\n"
        "            models.db.session.commit()\n        except IntegrityError:\n"
        "            if dup:\n                abort(400, message='exists')\n",
        "def f(n):\n    i = 0\n    while i < n:\n        db.session.commit()\n        i += 1\n",
        "def f():\n    try:\n        db.session.add(m)\n        db.session.commit()\n"
        "    except Exception:\n        db.session.rollback()\n        raise\n",
        "def f():\n    try:\n        db.session.commit()\n"
        "    except IntegrityError:\n        raise Conflict()\n",
        "@celery.task\ndef f():\n    try:\n        db.session.commit()\n"
        "    finally:\n        db.session.remove()\n",
        "def run():\n    while True:\n        with db.session.begin():\n"
        "            db.session.add(m)\n",
        "@shared_task\ndef f():\n    with transaction_scope():\n        db.session.commit()\n",
        "def run():\n    while True:\n        try:\n            db.session.commit()\n"
        "        except Exception:\n            db.session.rollback()\n",
        "@celery.task\ndef f():\n    session.commit()\n",
        "@celery.task\ndef f():\n    self.db.session.commit()\n",
    ],
)

CASES["POL004"] = RuleCases(
    fail=[
        # the whole loop inside one app context: the session lives across messages
        "def consume():\n    with app.app_context():\n        while True:\n"
        "            m = q.get()\n            db.session.add(m)\n",
        "def consume():\n    while True:\n        User.query.all()\n        time.sleep(1)\n",
        # remove() after the loop runs once, not per message
        "def consume():\n    try:\n        while True:\n            db.session.add(q.get())\n"
        "    finally:\n        db.session.remove()\n",
        "def on_msg(body, message):\n    db.session.add(body)\n\n"
        "Consumer(conn, queues=[q], callbacks=[on_msg])\n",
        "def handle(ch, method, props, body):\n    db.session.add(body)\n\n"
        "channel.basic_consume(queue='q', on_message_callback=handle)\n",
        # every long-running loop, not just `while True` (issue 11)
        "def run(stop):\n    while not stop.is_set():\n        Job.query.first()\n",
        "def run(self):\n    while self.running:\n        db.session.execute(s)\n",
        "def run(consumer):\n    for message in consumer:\n        db.session.add(E(message))\n"
        "        db.session.commit()\n",
        "def run(pubsub):\n    for item in pubsub.listen():\n        User.query.get(item)\n",
        "def run():\n    for _ in range(1000):\n        time.sleep(60)\n        Job.query.all()\n",
        "import models\n\ndef run():\n    while 1:\n        models.db.session.execute(s)\n",
    ],
    ok=[
        # each iteration in its own app context: teardown removes the session
        "def consume():\n    while True:\n        m = q.get()\n        with app.app_context():\n"
        "            db.session.add(m)\n            db.session.commit()\n",
        "def consume():\n    while True:\n        try:\n            process_message()\n"
        "            db.session.commit()\n        except Exception:\n"
        "            db.session.rollback()\n        finally:\n            db.session.remove()\n",
        "def pages():\n    while True:\n        try:\n"
        "            rows = db.session.execute(s).all()\n"
        "        finally:\n            db.session.rollback()\n        yield rows\n",
        "def poll():\n    while True:\n        q.get()\n",
        "def f():\n    while x < 3:\n        db.session.add(x)\n",
        "def f(todo):\n    while todo:\n        db.session.add(todo.pop())\n",
        # a search loop, not a long-running one
        "def new_token():\n    token = True\n    while token is not None:\n"
        "        value = make()\n        token = Token.query.filter_by(value=value).first()\n",
        "def f(rows):\n    for row in rows:\n        db.session.add(row)\n",
        "def run(consumer):\n    for message in consumer:\n        try:\n"
        "            db.session.add(E(message))\n        finally:\n"
        "            db.session.remove()\n",
        "def on_msg(body, message):\n    with app.app_context():\n        db.session.add(body)\n\n"
        "Consumer(conn, queues=[q], callbacks=[on_msg])\n",
        "def on_msg(body, message):\n    try:\n        db.session.add(body)\n"
        "    finally:\n        db.session.remove()\n\n"
        "Consumer(conn, queues=[q], callbacks=[on_msg])\n",
    ],
)

CASES["POL005"] = RuleCases(
    fail=[
        "@app.get('/r')\ndef create_report():\n    engine = create_engine(URL)\n",
        "@bp.route('/r')\ndef report():\n    return sa.create_engine(URL).connect()\n",
        "def fetch_users():\n    engine = create_engine(URL)\n    return engine\n",
        "class Repo:\n    def rows(self):\n        return create_async_engine(URL)\n",
    ],
    ok=[
        "engine = create_engine(URL)\n",
        "def create_app():\n    engine = create_engine(URL)\n",
        "def get_engine():\n    return create_engine(URL)\n",
        "@lru_cache\ndef reporting():\n    return create_engine(URL)\n",
        "def check(url):\n    return create_engine(url, poolclass=NullPool)\n",
        "def run_migrations_online():\n    create_engine(URL)\n",
    ],
)

CASES["POL006"] = RuleCases(
    fail=[
        "engine = create_engine(URL, pool_size=200)\n",
        "engine = create_engine(URL, max_overflow=500)\n",
        "SQLALCHEMY_ENGINE_OPTIONS = {'pool_size': 51}\n",
        "class Config:\n    SQLALCHEMY_POOL_SIZE = 100\n",
        "app.config['SQLALCHEMY_MAX_OVERFLOW'] = 101\n",
        "@dataclass\nclass S:\n    pool_size: int = 200\n",
    ],
    ok=[
        "engine = create_engine(URL, pool_size=20, max_overflow=50)\n",
        "SQLALCHEMY_ENGINE_OPTIONS = {'pool_size': 50, 'max_overflow': 100}\n",
        "engine = create_engine(URL, pool_size=size)\n",
        "sizes = {'other': 500}\n",
    ],
)

CASES["POL007"] = RuleCases(
    fail=[
        "engine = create_engine('mysql+pymysql://u@h/db')\n",
        "engine = create_engine(url='mysql://u@h/db', pool_size=5)\n",
    ],
    ok=[
        "engine = create_engine('mysql+pymysql://u@h/db', pool_recycle=1800)\n",
        "engine = create_engine('postgresql://u@h/db')\n",
        "engine = create_engine('mysql://u@h/db', **options)\n",
        # Flask-SQLAlchemy sets pool_recycle=7200 for MySQL itself
        "SQLALCHEMY_DATABASE_URI = 'mysql+pymysql://u@h/db'\n",
    ],
    fixed=[
        (
            "engine = create_engine('mysql+pymysql://u@h/db', pool_size=20)\n",
            "engine = create_engine('mysql+pymysql://u@h/db', pool_size=20, pool_recycle=1800)\n",
            True,
        ),
        (
            "engine = create_engine(\n    'mysql://u@h/db',\n    pool_size=20,\n)\n",
            "engine = create_engine(\n    'mysql://u@h/db',\n    pool_size=20,\n"
            "    pool_recycle=1800,\n)\n",
            True,
        ),
    ],
)

_MODELS = (
    "class User(db.Model):\n"
    "    posts = db.relationship('Post', backref='author')\n"
    "    roles = relationship('Role', lazy='selectin')\n\n"
)

CASES["POL008"] = RuleCases(
    fail=[
        "for user in User.query.all():\n    for p in user.posts:\n        print(p)\n",
        "def f():\n    users = User.query.filter_by(active=True).all()\n"
        "    for u in users:\n        print(len(u.posts))\n",
        "for u in db.session.scalars(select(User)):\n    print([p for p in u.posts])\n",
        "for u in db.session.query(User).all():\n    print(list(u.posts))\n" + "\n" + _MODELS,
        _MODELS + "for p in Post.query.all():\n    print(p.author.name)\n",
        "for u in db.session.execute(select(User)).scalars():\n    n = len(u.posts)\n",
        # one call away: a helper that returns a query (issue 11)
        "def recent_posts():\n    return Post.query.order_by(Post.id.desc()).limit(20)\n\n"
        "def feed():\n    for p in recent_posts():\n        for c in p.comments:\n"
        "            print(c)\n",
        "import models\n\nfor u in models.User.query.all():\n    print(len(u.posts))\n",
    ],
    ok=[
        "for u in User.query.options(selectinload(User.posts)).all():\n    for p in u.posts:\n"
        "        print(p)\n",
        "for u in db.session.scalars(select(User).options(joinedload(User.posts))):\n"
        "    print(len(u.posts))\n",
        "for user in User.query.all():\n    print(user.name.upper())\n",
        # relationship known to load eagerly
        _MODELS + "for u in User.query.all():\n    print(u.roles)\n",
        # relationships known: a column attribute is not one
        _MODELS + "for u in User.query.all():\n    print(u.email.lower())\n",
        "for row in items:\n    for x in row.children:\n        print(x)\n",
        "user = User.query.first()\nfor p in user.posts:\n    print(p)\n",
        _MODELS + "for p in Post.query.all():\n    p.author = me\n",
        "def recent_posts():\n    return Post.query.options(selectinload(Post.comments))\n\n"
        "def feed():\n    for p in recent_posts():\n        for c in p.comments:\n"
        "            print(c)\n",
    ],
)

# The table runs with SQLAlchemy 2.0 / Flask-SQLAlchemy 3.1 pinned; older pins and unpinned
# projects are in test_versions.py.
CASES["POL009"] = RuleCases(
    fail=[
        "user = User.query.get(1)\n",
        "order = db.session.query(Order).get(order_id)\n",
        "user = User.query.get_or_404(uid)\n",
        # dotted receivers, resolved from the imports
        "import models\nuser = models.User.query.get(1)\n",
        "from app import models\nuser = models.User.query.get_or_404(1)\n",
        # db bound only as an attribute: reported, but (below) never fixed
        "def test_x(app):\n    assert Users.query.get(2).banned\n    app.db.session.commit()\n",
    ],
    ok=[
        "user = db.session.get(User, 1)\n",
        "value = request.args.get('x')\n",
        "value = self.query.get('x')\n",
        "value = User.query.filter_by(id=1).first()\n",
        "value = self.models.User.query.get(1)\n",
    ],
    fixed=[
        (
            "from app import db\nuser = User.query.get(user_id)\n",
            "from app import db\nuser = db.session.get(User, user_id)\n",
            False,
        ),
        (
            "order = db.session.query(Order).get(order_id)  # legacy\n",
            "order = db.session.get(Order, order_id)  # legacy\n",
            False,
        ),
        (
            "from app import db\nuser = User.query.get_or_404(uid)\n",
            "from app import db\nuser = db.get_or_404(User, uid)\n",
            False,
        ),
        (
            "from app import db, models\nuser = models.User.query.get(uid)\n",
            "from app import db, models\nuser = db.session.get(models.User, uid)\n",
            False,
        ),
    ],
    unchanged=[
        # only `app.db` exists here: writing `db.session.get` would be an undefined name
        "def test_x(app):\n    assert Users.query.get(2).banned\n    app.db.session.commit()\n",
        "import models\nuser = models.User.query.get(1)\n",
    ],
    config={"pins": Pins((2, 0), (3, 1), "cases.py")},
)

CASES["POL010"] = RuleCases(
    fail=[
        "def login(e, pw):\n    user = User.query.filter_by(email=e).first()\n"
        "    PasswordHasher().verify(user.h, pw)\n    db.session.commit()\n",
        "def f():\n    rows = db.session.execute(q).all()\n    requests.post(URL, json=rows)\n"
        "    db.session.commit()\n",
        # polling loop: sleeps between queries, the sleep first in the text
        "def poll():\n    while True:\n        time.sleep(5)\n"
        "        job = Job.query.filter_by(done=False).first()\n",
        "def f(pw):\n    u = db.session.get(User, 1)\n    bcrypt.checkpw(pw, u.h)\n",
        "def f(pw):\n    u = db.session.get(User, 1)\n    ph.hash(pw)\n",
        "def f():\n    u = db.session.scalar(q)\n    urllib.request.urlopen(URL)\n",
        # hashing libraries and password methods (issue 11)
        "def f(pw):\n    u = User.query.first()\n    bcrypt.check_password_hash(u.h, pw)\n",
        "def f(pw):\n    u = User.query.first()\n    pwd_context.verify(pw, u.h)\n",
        "def f(pw):\n    u = User.query.first()\n    sha256_crypt.hash(pw)\n",
        "def f(pw):\n    u = User.query.first()\n    return u.check_password(pw)\n",
        "import models\n\ndef f(pw):\n    u = models.User.query.first()\n"
        "    u.verify_password(pw)\n",
        "def f(pw):\n    u = User.query.first()\n    argon2.hash_password(pw)\n",
        # HTTP clients, cloud uploads, subprocess
        "def f():\n    u = User.query.first()\n    httpx.post(URL, json=u.id)\n",
        "def f(s3):\n    u = User.query.first()\n    s3.upload_file(u.path, 'b', 'k')\n",
        "def f(blob):\n    r = Report.query.first()\n    blob.upload_from_string(r.body)\n",
        "def f():\n    r = Report.query.first()\n    subprocess.run(['gzip', r.path])\n",
        # one call away: a helper of this module that hashes
        "def _hash(pw):\n    return bcrypt.hashpw(pw, bcrypt.gensalt())\n\n"
        "def f(pw):\n    u = User.query.first()\n    u.h = _hash(pw)\n    db.session.commit()\n",
        # the polling pattern: each function alone looks clean
        "def pending_jobs():\n    return Job.query.filter_by(done=False).all()\n\n"
        "def watch():\n    while True:\n        for job in pending_jobs():\n"
        "            notify(job)\n        time.sleep(30)\n",
    ],
    ok=[
        "def login(e, pw):\n"
        "    user = User.query.filter_by(email=e).first()\n    db.session.rollback()\n"
        "    PasswordHasher().verify(user.h, pw)\n",
        "def f(pw):\n    h = PasswordHasher().hash(pw)\n    db.session.add(User(h=h))\n"
        "    db.session.commit()\n",
        "def poll():\n    while True:\n"
        "        job = Job.query.first()\n        db.session.commit()\n"
        "        time.sleep(5)\n",
        "def f():\n    time.sleep(1)\n    return User.query.all()\n",
        "def f(d):\n    u = db.session.get(User, 1)\n    d.verify(u)\n",
        "def pending_jobs():\n    jobs = Job.query.filter_by(done=False).all()\n"
        "    db.session.commit()\n    return jobs\n\n"
        "def watch():\n    while True:\n        for job in pending_jobs():\n"
        "            notify(job)\n        time.sleep(30)\n",
        "def pending_jobs():\n    return Job.query.filter_by(done=False).all()\n\n"
        "def watch():\n    while True:\n        for job in pending_jobs():\n"
        "            notify(job)\n        db.session.remove()\n        time.sleep(30)\n",
        "def f(pw):\n    u = User(password=pw)\n    u.set_password(pw)\n    db.session.add(u)\n",
        # the failure branch queries and raises: the code after it runs without a transaction
        "def login(pw, user):\n    if user is None:\n        Failure.query.first()\n"
        "        raise Unauthorized()\n    return bcrypt.hashpw(pw, salt)\n",
        # a model method that commits two calls down ends the transaction
        "class CRUD:\n    def update(self, **kw):\n        return self.save()\n\n"
        "    def save(self):\n        db.session.add(self)\n        db.session.commit()\n\n"
        "def start(sid):\n    s = Scenario.query.get(sid)\n    s.update(status=3)\n"
        "    os.system('terraform apply')\n",
        "@click.command()\ndef password(email, pw):\n"
        "    u = User.query.filter_by(email=email).first()\n"
        "    u.hash_password(pw)\n    db.session.commit()\n",
    ],
)
