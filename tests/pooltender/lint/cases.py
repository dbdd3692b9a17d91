"""Rule test tables (after sqlfluff's std_rule_cases): per rule, sources that must fail, sources
that must pass, and fixes as (before, after, needs --unsafe-fixes)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RuleCases:
    fail: list[str]
    ok: list[str]
    fixed: list[tuple[str, str, bool]] = field(default_factory=list)


CASES: dict[str, RuleCases] = {}

CASES["PT001"] = RuleCases(
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

CASES["PT002"] = RuleCases(
    fail=[
        "def get_user():\n    user = db.session.get(User, 1)\n"
        "    db.session.close()\n    return user\n",
        "def teardown(exc):\n    db.session.remove()\n    db.session.close()\n",
        "x = [db.session.close()]\n",
    ],
    ok=[
        "def teardown(exc):\n    db.session.remove()\n",
        "def f():\n    f.close()\n    conn.close()\n    session.close()\n",
        "def f():\n    self.db.session.close()\n",
    ],
    fixed=[
        (
            "def teardown(exc):\n    db.session.remove()\n    db.session.close()\n",
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
            "def get_user():\n    user = load()\n"
            "    db.session.close()  # not needed!\n    return user\n",
            "def get_user():\n    user = load()\n    return user\n",
            True,
        ),
        (
            "def f():\n    if x:\n        db.session.close()\n    return 1\n",
            "def f():\n    if x:\n        pass\n    return 1\n",
            True,
        ),
    ],
)

CASES["PT003"] = RuleCases(
    fail=[
        "def f(c):\n    c.used = True\n    db.session.commit()\n",
        "def f():\n    try:\n        db.session.commit()\n    except Exception:\n        log()\n",
        "def f():\n    try:\n        work()\n    except Exception:\n        db.session.rollback()\n"
        "    else:\n        db.session.commit()\n",
        "def f():\n    with app.app_context():\n        db.session.commit()\n",
    ],
    ok=[
        "def f():\n    try:\n        db.session.add(m)\n        db.session.commit()\n"
        "    except Exception:\n        db.session.rollback()\n        raise\n",
        "def f():\n    try:\n        db.session.commit()\n"
        "    except IntegrityError:\n        raise Conflict()\n",
        "def f():\n    try:\n        db.session.commit()\n"
        "    finally:\n        db.session.remove()\n",
        "def f():\n    with db.session.begin():\n"
        "        db.session.add(m)\n        db.session.commit()\n",
        "def f():\n    with transaction_scope():\n        db.session.commit()\n",
        "def f():\n    session.commit()\n",
    ],
)

CASES["PT004"] = RuleCases(
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
        "def on_msg(body, message):\n    with app.app_context():\n        db.session.add(body)\n\n"
        "Consumer(conn, queues=[q], callbacks=[on_msg])\n",
        "def on_msg(body, message):\n    try:\n        db.session.add(body)\n"
        "    finally:\n        db.session.remove()\n\n"
        "Consumer(conn, queues=[q], callbacks=[on_msg])\n",
    ],
)

CASES["PT005"] = RuleCases(
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

CASES["PT006"] = RuleCases(
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

CASES["PT007"] = RuleCases(
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

CASES["PT008"] = RuleCases(
    fail=[
        "for user in User.query.all():\n    for p in user.posts:\n        print(p)\n",
        "def f():\n    users = User.query.filter_by(active=True).all()\n"
        "    for u in users:\n        print(len(u.posts))\n",
        "for u in db.session.scalars(select(User)):\n    print([p for p in u.posts])\n",
        "for u in db.session.query(User).all():\n    print(list(u.posts))\n" + "\n" + _MODELS,
        _MODELS + "for p in Post.query.all():\n    print(p.author.name)\n",
        "for u in db.session.execute(select(User)).scalars():\n    n = len(u.posts)\n",
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
    ],
)

CASES["PT009"] = RuleCases(
    fail=[
        "user = User.query.get(1)\n",
        "order = db.session.query(Order).get(order_id)\n",
        "user = User.query.get_or_404(uid)\n",
    ],
    ok=[
        "user = db.session.get(User, 1)\n",
        "value = request.args.get('x')\n",
        "value = self.query.get('x')\n",
        "value = User.query.filter_by(id=1).first()\n",
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
    ],
)

CASES["PT010"] = RuleCases(
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
    ],
)
