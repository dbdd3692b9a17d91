"""The README's coupon-service command sequence works, verbatim, on a fresh SQLite database.

Issue 13: ``coupons generate-codes --campaign 1`` in the README failed on a fresh database
(nothing created campaign 1, and no command could). The commands are read from README.md's
code block, so the README cannot drift from what runs: the lines from ``coupons db upgrade``
to ``coupons generate-codes`` are run by bash as written, with ``coupons`` being this
checkout's CLI, in an empty directory without ``DATABASE_URL`` (the default ./var/coupons.db).
"""

from __future__ import annotations

import csv
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from sqlalchemy import create_engine, text

from tests._paths import pythonpath

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
#: The commands, in this order, that make a fresh database usable (the issue's sequence).
SEQUENCE = (
    "coupons db upgrade",
    "coupons create-user",
    "coupons create-campaign",
    "generate-codes",
)


def readme_sequence() -> str:
    """The lines of the "The coupon service" section's first ``sh`` block, from its first
    line through the ``coupons generate-codes`` command (continuations included)."""
    section = README.read_text(encoding="utf-8").split("## The coupon service", 1)[1]
    match = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert match, "README.md: no ```sh block under '## The coupon service'"
    lines: list[str] = []
    for line in match.group(1).splitlines():
        lines.append(line)
        if line.startswith("coupons generate-codes"):
            break
    else:
        raise AssertionError("README.md: the block has no `coupons generate-codes` line")
    return "\n".join(lines) + "\n"


def test_the_block_holds_the_whole_sequence_in_order() -> None:
    script = readme_sequence()
    positions = [script.find(command) for command in SEQUENCE]
    assert -1 not in positions, (SEQUENCE, script)
    assert positions == sorted(positions)
    # generate-codes uses the id create-campaign printed, not a number that happens to exist
    assert re.search(r"--campaign \"?\$\w+", script), script


def test_the_readme_sequence_runs_on_a_fresh_sqlite_database(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "coupons"  # this checkout's CLI, whatever `coupons` is on PATH
    shim.write_text(
        "#!/bin/sh\n"
        f"exec {shlex.quote(sys.executable)} -c "
        '\'import sys; sys.argv[0] = "coupons"; from coupons.cli import main; main()\' "$@"\n'
    )
    shim.chmod(0o755)
    work = tmp_path / "fresh"
    work.mkdir()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DATABASE_", "POOLTENDER_", "COUPONS_", "SECRET_KEY"))
    }
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=pythonpath(),
        COUPONS_PASSWORD="a long enough password for ops",
    )
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", readme_sequence()],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr

    database = work / "var" / "coupons.db"
    assert database.exists(), "the sequence did not use the default ./var/coupons.db"
    engine = create_engine(f"sqlite:///{database}")
    try:
        with engine.connect() as conn:
            users = conn.execute(text("SELECT email, role FROM users")).all()
            campaigns = conn.execute(text("SELECT id, name, currency FROM campaigns")).all()
            codes = conn.execute(
                text("SELECT campaign_id, count(*) FROM coupons GROUP BY campaign_id")
            ).all()
    finally:
        engine.dispose()
    assert [tuple(u) for u in users] == [("ops@example.com", "admin")]
    assert len(campaigns) == 1
    campaign_id = campaigns[0].id
    count = int(re.search(r"--count (\d+)", readme_sequence()).group(1))  # type: ignore[union-attr]
    assert [tuple(c) for c in codes] == [(campaign_id, count)]
    assert f"generated {count:,} codes for campaign {campaign_id}" in done.stdout

    with (work / "codes.csv").open(newline="", encoding="utf-8") as fh:
        exported = list(csv.DictReader(fh))
    assert len(exported) == count
    assert all(re.fullmatch(r"SPRING-[0-9A-Z]{4}-[0-9A-Z]{4}", row["code"]) for row in exported)
