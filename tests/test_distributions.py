"""The two distributions of this repository (docs/adopting.md, "Two distributions from one
repository"), built offline and installed into a fresh virtual environment.

- Both build: an sdist, then the wheel from that sdist (``python -m build --no-isolation``,
  so the build backend of this venv is used and no package index is asked), from a copy of
  each project's files (a build writes ``build/`` and ``*.egg-info`` beside the sources,
  which must not appear in the checkout while other tests read it).
- Their metadata: valid core metadata (``packaging.metadata`` with ``validate=True``, and
  ``twine check --strict``, the check the package index runs); pooltender's unconditional
  ``Requires-Dist`` is SQLAlchemy alone and each feature extra requires what the table of
  docs/adopting.md says; pooltender-coupons requires ``pooltender[...]==`` its own version;
  neither wheel nor sdist carries the other's package; the service's migrations, templates
  and ``py.typed`` are in its wheel.
- An adopter's environment: a venv without system site packages, the pooltender wheel
  installed with ``--no-deps --no-index``, and exactly the distributions its requirements
  pull in made importable by a ``.pth`` file naming a directory of symlinks into this venv's
  site-packages (no index needed): with the core's closure (SQLAlchemy and its own
  requirements) ``pooltender.settings`` and ``pooltender.watch`` import, the README's plain
  SQLAlchemy example runs, nothing of the service, the command line or the other extras can
  be found, and the ``pooltender`` script says in one line (exit 2) which extra it needs;
  with ``[flask]``'s closure added, the README's five-line adoption runs as written.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
import tomllib
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.metadata import Metadata
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests._paths import LIBRARY_SRC, ROOT, SERVICE_SRC

pytestmark = pytest.mark.slow  # two builds and a venv: about 20 s

VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
#: the extras docs/adopting.md documents, and the checkout-only ones
FEATURE_EXTRAS = ("flask", "prometheus", "otel", "lint", "cli")
PLATFORM_EXTRAS = ("mysql", "postgres", "gevent")
CHECKOUT_EXTRAS = ("dev", "bench")
#: what the service's code imports and an adopter of the core must not get
NOT_IN_CORE = (
    "coupons",
    "gunicorn",
    "kombu",
    "argon2",
    "flask_smorest",
    "jwt",
    "libcst",
    "click",
    "rich",
    "prometheus_client",
    "flask",
    "flask_sqlalchemy",
    "alembic",
    "marshmallow",
    "opentelemetry",
)
MISSING_CLI = "pooltender's command line needs: pip install 'pooltender[cli]'"


@dataclass(frozen=True)
class Built:
    wheel: Path
    sdist: Path
    metadata: Metadata

    def names(self) -> list[str]:
        with zipfile.ZipFile(self.wheel) as archive:
            return archive.namelist()

    def sdist_names(self) -> list[str]:
        with tarfile.open(self.sdist) as archive:
            return [name.split("/", 1)[1] for name in archive.getnames() if "/" in name]

    def entry_points(self) -> str:
        with zipfile.ZipFile(self.wheel) as archive:
            (name,) = (n for n in archive.namelist() if n.endswith(".dist-info/entry_points.txt"))
            return archive.read(name).decode()


def project_copy(project: Path, sources: Path, into: Path) -> Path:
    """The project's own top-level files (pyproject.toml, README.md, ...) and its source tree,
    copied to ``into``: what a build of that project may read."""
    into.mkdir(parents=True)
    for item in project.iterdir():
        if item.is_file():
            shutil.copy2(item, into / item.name)
    shutil.copytree(sources, into / sources.relative_to(project), ignore=IGNORED)
    return into


def build(project: Path, out: Path) -> Built:
    done = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(project)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PIP_NO_INDEX": "1"},
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    with zipfile.ZipFile(wheel) as archive:
        (name,) = (n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        raw = archive.read(name)
    return Built(wheel, sdist, Metadata.from_email(raw, validate=True))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Built]:
    tmp = tmp_path_factory.mktemp("distributions")
    library = project_copy(ROOT, LIBRARY_SRC, tmp / "pooltender")
    service = project_copy(SERVICE_SRC.parent, SERVICE_SRC, tmp / "pooltender-coupons")
    return {
        "pooltender": build(library, tmp / "out-pooltender"),
        "pooltender-coupons": build(service, tmp / "out-coupons"),
    }


# ----------------------------------------------------------------------------- metadata


def requirements(metadata: Metadata, extra: str | None) -> dict[str, Requirement]:
    """``name -> requirement`` of the requirements that apply with ``extra`` (None: the
    unconditional ones only)."""
    found: dict[str, Requirement] = {}
    for req in metadata.requires_dist or []:
        if req.marker is None:
            applies = extra is None
        else:
            applies = extra is not None and req.marker.evaluate({"extra": extra})
            applies = applies and not req.marker.evaluate({"extra": ""})
        if applies:
            found[canonicalize_name(req.name)] = req
    return found


def bare(req: Requirement) -> str:
    """``req`` without its marker, as the docs write it (``Flask>=3.0``)."""
    extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
    return f"{req.name}{extras}{req.specifier}"


def documented_extras() -> dict[str, set[str]]:
    """docs/adopting.md's table: extra (or "(core)") -> the requirements it lists."""
    text = (ROOT / "docs" / "adopting.md").read_text()
    table = text.split("### pooltender's dependencies and extras", 1)[1].split("\n\n", 2)[1]
    rows: dict[str, set[str]] = {}
    for line in table.splitlines()[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        extra = cells[0].strip("`")
        if extra in FEATURE_EXTRAS or extra == "(core)":
            rows[extra] = set(re.findall(r"`([^`]+)`", cells[1]))
    return rows


def test_the_versions_are_in_lockstep(built: dict[str, Built]) -> None:
    assert built["pooltender"].metadata.name == "pooltender"
    assert built["pooltender-coupons"].metadata.name == "pooltender-coupons"
    assert str(built["pooltender"].metadata.version) == VERSION
    assert str(built["pooltender-coupons"].metadata.version) == VERSION


def test_the_core_requires_sqlalchemy_only(built: dict[str, Built]) -> None:
    core = requirements(built["pooltender"].metadata, None)
    assert list(core) == ["sqlalchemy"]
    assert {bare(r) for r in core.values()} == documented_extras()["(core)"]


def test_the_extras_are_as_documented(built: dict[str, Built]) -> None:
    metadata = built["pooltender"].metadata
    assert set(metadata.provides_extra or []) == {
        *FEATURE_EXTRAS,
        *PLATFORM_EXTRAS,
        "all",
        *CHECKOUT_EXTRAS,
    }
    documented = documented_extras()
    assert set(documented) == {*FEATURE_EXTRAS, "(core)"}
    everything: set[str] = set()
    for extra in FEATURE_EXTRAS:
        listed = {bare(r) for r in requirements(metadata, extra).values()}
        assert listed == documented[extra], extra
        everything |= listed
    assert {bare(r) for r in requirements(metadata, "all").values()} == everything


def test_the_service_requires_the_same_pooltender(built: dict[str, Built]) -> None:
    metadata = built["pooltender-coupons"].metadata
    core = requirements(metadata, None)
    pin = core["pooltender"]
    assert str(pin.specifier) == f"=={VERSION}"
    assert pin.extras == {"flask", "prometheus", "cli"}
    assert {
        "alembic",
        "argon2-cffi",
        "pyjwt",
        "kombu",
        "marshmallow",
        "flask-smorest",
        "apispec",
        "gunicorn",
        "click",
        "rich",
    } <= set(core)
    assert set(metadata.provides_extra or []) == set(PLATFORM_EXTRAS)
    for extra in PLATFORM_EXTRAS:
        (req,) = requirements(metadata, extra).values()
        assert (req.name, req.extras, str(req.specifier)) == ("pooltender", {extra}, f"=={VERSION}")


def test_neither_distribution_carries_the_others_package(built: dict[str, Built]) -> None:
    library, service = built["pooltender"], built["pooltender-coupons"]
    assert {n.split("/")[0] for n in library.names()} == {
        "pooltender",
        f"pooltender-{VERSION}.dist-info",
    }
    assert {n.split("/")[0] for n in service.names()} == {
        "coupons",
        f"pooltender_coupons-{VERSION}.dist-info",
    }
    assert not any(n.startswith(("coupons/", "src/coupons/")) for n in library.sdist_names())
    assert not any("pooltender/" in n for n in service.sdist_names())
    assert "pooltender = pooltender.__main__:main" in library.entry_points()
    assert "coupons = coupons.cli:main" in service.entry_points()
    assert "coupons" not in library.entry_points()


def test_package_data_is_in_the_wheels(built: dict[str, Built]) -> None:
    library = set(built["pooltender"].names())
    service = set(built["pooltender-coupons"].names())
    assert {"pooltender/py.typed", "pooltender/templates/dashboard.html"} <= library
    assert any(n.startswith("pooltender/static/") for n in library)
    migrations = SERVICE_SRC / "coupons" / "migrations"
    expected = {
        "coupons/py.typed",
        "coupons/templates/coupons/sign_in.html",
        "coupons/migrations/env.py",
        "coupons/migrations/script.py.mako",
        *(f"coupons/migrations/versions/{p.name}" for p in (migrations / "versions").glob("*.py")),
    }
    assert expected <= service
    assert "src/coupons/migrations/env.py" in built["pooltender-coupons"].sdist_names()


def test_twine_check_passes(built: dict[str, Built]) -> None:
    files = [str(p) for b in built.values() for p in (b.wheel, b.sdist)]
    done = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *files],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("PASSED") == 4, done.stdout


# ----------------------------------------------------------------------------- an adopter's venv


def closure(wanted: Iterable[Requirement]) -> set[str]:
    """The distributions (canonical names) that installing ``wanted`` brings in, read from
    the metadata of those installed in this venv (markers evaluated here)."""
    env = default_environment()
    todo = list(wanted)
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen.add(name)
        for sub_text in importlib.metadata.distribution(name).requires or []:
            sub = Requirement(sub_text)
            for extra in req.extras or {""}:
                if sub.marker is None or sub.marker.evaluate({**env, "extra": extra}):
                    todo.append(sub)
                    break
    return seen


def link_distributions(names: Iterable[str], into: Path) -> None:
    """Symlink each named distribution's top-level files (packages, modules, dist-info) from
    this venv's site-packages into ``into``."""
    into.mkdir(exist_ok=True)
    for name in names:
        dist = importlib.metadata.distribution(name)
        tops = {Path(str(f)).parts[0] for f in dist.files or []}
        for top in tops - {"..", "__pycache__"}:
            target = Path(str(dist.locate_file(top)))
            assert target.exists(), (name, target)
            if not (into / top).exists():
                (into / top).symlink_to(target)


def adopter_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != "VIRTUAL_ENV"}
    return {**env, "PYTHONNOUSERSITE": "1"}


def run_in(venv: Path, code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``code`` under the venv's interpreter in isolated mode (no PYTHON* variables, no user
    site, not the current directory on sys.path)."""
    return subprocess.run(
        [str(venv / "bin" / "python"), "-I", "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=adopter_env(),
        check=False,
    )


def run_script(venv: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The venv's ``pooltender`` console script, as an adopter runs it."""
    return subprocess.run(
        [str(venv / "bin" / "pooltender"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=adopter_env(),
        check=False,
    )


def readme_block(after: str) -> str:
    """The first ```python block of README.md after the line ``after``."""
    text = (ROOT / "README.md").read_text()
    tail = text.split(after, 1)[1]
    return tail.split("```python\n", 1)[1].split("```", 1)[0]


def test_an_adopter_gets_the_core_alone_and_flask_works_with_its_own_extra(
    built: dict[str, Built], tmp_path: Path
) -> None:
    venv = tmp_path / "adopter"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    installed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "--no-deps",
            "--no-index",
            "--quiet",
            str(built["pooltender"].wheel),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        # not this checkout's PYTHONPATH: its src/pooltender.egg-info (an editable install's)
        # would make pip see pooltender as installed already and install nothing
        env=adopter_env(),
        check=False,
    )
    assert installed.returncode == 0, installed.stderr
    (site,) = venv.glob("lib/python3*/site-packages")
    deps = tmp_path / "deps"
    (site / "adopter-deps.pth").write_text(f"{deps}\n")
    work = tmp_path / "work"
    work.mkdir()

    # the core: what `pip install pooltender` brings
    core = closure(requirements(built["pooltender"].metadata, None).values())
    assert {"sqlalchemy"} <= core <= {"sqlalchemy", "typing-extensions", "greenlet"}
    link_distributions(core, deps)
    probe = textwrap.dedent(
        f"""
        import importlib.util, sys
        import pooltender.settings, pooltender.watch
        assert pooltender.settings.__file__.startswith({str(site)!r}), pooltender.settings.__file__
        found = [n for n in {NOT_IN_CORE!r} if importlib.util.find_spec(n) is not None]
        assert not found, found
        print("core ok")
        """
    )
    done = run_in(venv, probe, work)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "core ok"

    plain = readme_block("Plain SQLAlchemy, without Flask:")
    url = f"sqlite:///{work / 'plain.db'}"
    prelude = f"from sqlalchemy import create_engine\nurl = {url!r}\n"
    done = run_in(venv, prelude + plain, work)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "0"  # nothing checked out

    script = run_script(venv, work)
    assert script.returncode == 2, script.stdout + script.stderr
    assert (script.stdout + script.stderr).strip().splitlines() == [MISSING_CLI]

    # [flask]: the extension, with nothing else
    flask = closure(requirements(built["pooltender"].metadata, "flask").values())
    assert {"flask", "flask-sqlalchemy", "werkzeug", "jinja2", "click"} <= flask
    assert not flask & {"prometheus-client", "rich", "libcst", "gunicorn"}
    link_distributions(flask, deps)
    five_lines = readme_block("### Adopt it in an existing Flask-SQLAlchemy app (five lines)")
    assert len([line for line in five_lines.splitlines() if line.strip()]) == 5, five_lines
    app = textwrap.dedent(
        f"""
        import importlib.util
        from flask import Flask
        from sqlalchemy import text

        app = Flask("adopter")
        app.config["SQLALCHEMY_DATABASE_URI"] = {f"sqlite:///{work / 'app.db'}"!r}

        def require_admin():
            return None
        """
    )
    check = textwrap.dedent(
        """
        with app.app_context():
            assert db.session.execute(text("SELECT 1")).scalar() == 1
            db.session.remove()
        with app.test_client() as client:
            stats = client.get("/pooltender/stats")
            assert stats.status_code == 200, stats.status_code
            assert client.get("/metrics").status_code == 404  # no [prometheus]: not served
        for name in ("prometheus_client", "rich", "libcst", "coupons", "gunicorn"):
            assert importlib.util.find_spec(name) is None, name
        print("flask ok", app.config["POOLTENDER_POOL_SIZE"])
        """
    )
    done = run_in(venv, app + five_lines + check, work)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "flask ok 4"

    # Flask brings click, not rich: the script still says what to install, in one line
    script = run_script(venv, work)
    assert script.returncode == 2, script.stdout + script.stderr
    assert (script.stdout + script.stderr).strip().splitlines() == [MISSING_CLI]
