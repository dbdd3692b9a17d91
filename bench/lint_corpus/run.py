"""The real-world corpus harness for ``pooltender lint``: precision, recall, fix safety, speed.

One command::

    python bench/lint_corpus/run.py [--corpus /work/corpus] [--out /tmp/lint_corpus] [--no-fix]

For every repository of ``corpus.json`` (name, URL, pinned commit) it expects a checkout at
``<corpus>/<name>`` (this machine has no network beyond package registries, so checkouts are
made beforehand; none of their code is ever committed here) and checks that it is at the
pinned commit. Then:

* **lint** with every rule (one process, so lines/s is per core) and save the findings as
  ``<out>/<name>.json``;
* **precision per rule and overall** against ``labels/<name>.json`` (hand-judged: file, line,
  code, verdict true/false/debatable, reason). Debatable labels are left out, except that
  debatable labels beyond 20 % of a rule's labelled findings count as false (so a rule cannot
  hide behind "debatable"). Findings without a label are counted and listed: they need one;
* **recall**: of the labels marked true (the frozen floor from before issue 11), how many are
  still reported (same file, line and code -- or the code's alias);
* **fix safety** on a temporary copy of each repository: ``--fix --unsafe-fixes``, then every
  changed file must compile, ruff's F821/F811/F401 must report nothing that was not reported
  before the fix (compared by file, code and message, as lines move), and a second fix run
  must change nothing;
* **speed**: lines per second of the lint run without ``--fix``. The machine this runs on is
  shared, so treat the figure as rough.

Precision follows the usual definition (true / (true + false)); the 20 % debatable cap is
issue 11's rule.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pooltender.lint.config import LintConfig, default_config
from pooltender.lint.engine import lint_paths
from pooltender.lint.rules import canonical_code
from pooltender.lint.versions import read_pins

HERE = Path(__file__).resolve().parent
DEBATABLE_CAP = 0.20
RUFF_CODES = "F821,F811,F401"


@dataclass
class RepoResult:
    name: str
    status: str = "ok"
    files: int = 0
    lines: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    findings: list[dict[str, Any]] = field(default_factory=list)
    fix: dict[str, Any] = field(default_factory=dict)


def git_head(path: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def corpus_config(path: Path) -> LintConfig:
    """Every rule, with the repository's own pins (its pyproject / requirements / locks)."""
    return replace(default_config(), pins=read_pins(path))


def lint_repo(path: Path) -> tuple[list[dict[str, Any]], int, int, float, float]:
    """Findings (as dicts with repository-relative paths), files, lines, wall and CPU seconds
    (CPU time of this process: the figure that survives a loaded machine)."""
    config = corpus_config(path)
    started, cpu_started = time.perf_counter(), time.process_time()
    report = lint_paths([path], config, jobs=1)
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started
    findings = []
    for v in report.violations:
        findings.append(
            {
                "file": Path(v.path).resolve().relative_to(path.resolve()).as_posix(),
                "line": v.line,
                "code": v.code,
                "message": v.message,
                "fix": v.fix_safety,
            }
        )
    return findings, report.files, report.lines, seconds, cpu_seconds


def ruff_diagnostics(path: Path) -> Counter[tuple[str, str, str]]:
    ruff = Path(sys.executable).with_name("ruff")
    cmd = [str(ruff) if ruff.exists() else "ruff", "check", "--isolated", "--select"]
    cmd += [RUFF_CODES, "--output-format", "json", "--exit-zero", "-q", str(path)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    data = json.loads(out.stdout or "[]")
    return Counter(
        (Path(d["filename"]).relative_to(path).as_posix(), d["code"], d["message"]) for d in data
    )


def snapshot(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*.py"))}


def fix_safety(path: Path) -> dict[str, Any]:
    """Run ``--fix --unsafe-fixes`` on a temporary copy; report what broke."""
    with tempfile.TemporaryDirectory(prefix="lintfix-") as tmp:
        copy = Path(tmp) / path.name
        shutil.copytree(path, copy, ignore=shutil.ignore_patterns(".git"), symlinks=True)
        before_ruff = ruff_diagnostics(copy)
        before = snapshot(copy)
        config = corpus_config(path)
        first = lint_paths([copy], config, fix=True, unsafe_fixes=True, jobs=1)
        after = snapshot(copy)
        changed = sorted(f for f in after if after[f] != before.get(f))
        not_compiling = []
        for rel in changed:
            try:
                compile(after[rel], rel, "exec")
            except SyntaxError as exc:
                not_compiling.append(f"{rel}: {exc.msg}")
        after_ruff = ruff_diagnostics(copy)
        new_ruff = sorted(f"{f}: {c} {m}" for (f, c, m) in (after_ruff - before_ruff))
        second = lint_paths([copy], config, fix=True, unsafe_fixes=True, jobs=1)
        again = snapshot(copy)
        second_changed = sorted(f for f in again if again[f] != after.get(f))
        return {
            "fixes_applied": first.fixes_applied,
            "files_changed": len(changed),
            "not_compiling": not_compiling,
            "new_ruff": new_ruff,
            "second_run_fixes": second.fixes_applied,
            "second_run_changed": second_changed,
            "ok": not not_compiling and not new_ruff and not second_changed,
        }


def load_labels(name: str) -> list[dict[str, Any]]:
    path = HERE / "labels" / f"{name}.json"
    if not path.exists():
        return []
    data = json.loads(path.read_text(encoding="utf-8"))
    rows: list[dict[str, Any]] = data["labels"]
    return rows


def key(file: str, line: int, code: str) -> tuple[str, int, str]:
    return file, line, canonical_code(code)


def score(results: list[RepoResult]) -> dict[str, Any]:
    """Precision per rule over current findings that carry a label; recall of frozen trues."""
    verdicts: dict[str, Counter[str]] = {}
    unlabelled: list[str] = []
    recall_hit = recall_total = 0
    missed: list[str] = []
    later_missed: list[str] = []
    for res in results:
        labels = {key(r["file"], r["line"], r["code"]): r for r in load_labels(res.name)}
        reported = {key(f["file"], f["line"], f["code"]) for f in res.findings}
        for f in res.findings:
            k = key(f["file"], f["line"], f["code"])
            row = labels.get(k)
            code = canonical_code(f["code"])
            counter = verdicts.setdefault(code, Counter())
            if row is None:
                counter["unlabelled"] += 1
                unlabelled.append(f"{res.name}/{f['file']}:{f['line']} {code} {f['message']}")
            else:
                counter[row["verdict"]] += 1
        for k, row in labels.items():
            if row["verdict"] == "true" and row.get("frozen", True):
                recall_total += 1
                if k in reported:
                    recall_hit += 1
                else:
                    missed.append(f"{res.name}/{row['file']}:{row['line']} {k[2]}")
            elif row["verdict"] == "true" and k not in reported:
                later_missed.append(f"{res.name}/{row['file']}:{row['line']} {k[2]}")
    per_rule = {}
    total_true = total_false = 0
    for code, c in sorted(verdicts.items()):
        labelled = c["true"] + c["false"] + c["debatable"]
        allowed = int(DEBATABLE_CAP * labelled)
        excess = max(0, c["debatable"] - allowed)
        t, f = c["true"], c["false"] + excess
        total_true += t
        total_false += f
        per_rule[code] = {
            "true": c["true"],
            "false": c["false"],
            "debatable": c["debatable"],
            "debatable_counted_false": excess,
            "unlabelled": c["unlabelled"],
            "precision": (t / (t + f)) if t + f else None,
        }
    overall = total_true / (total_true + total_false) if total_true + total_false else None
    return {
        "per_rule": per_rule,
        "overall_precision": overall,
        "recall": (recall_hit / recall_total) if recall_total else None,
        "recall_hit": recall_hit,
        "recall_total": recall_total,
        "missed": missed,
        "later_missed": later_missed,
        "unlabelled": unlabelled,
    }


def pct(value: float | None) -> str:
    return "  n/a" if value is None else f"{100 * value:5.1f}%"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=Path("/work/corpus"))
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "lint_corpus")
    parser.add_argument("--no-fix", action="store_true", help="skip the fix-safety runs")
    parser.add_argument("--only", action="append", default=[], help="repository name(s)")
    parser.add_argument("--show-unlabelled", action="store_true")
    parser.add_argument(
        "--docs", type=Path, default=None, help="also write the report as Markdown here"
    )
    args = parser.parse_args(argv)
    corpus = json.loads((HERE / "corpus.json").read_text(encoding="utf-8"))["repositories"]
    args.out.mkdir(parents=True, exist_ok=True)
    results: list[RepoResult] = []
    for entry in corpus:
        name = entry["name"]
        if args.only and name not in args.only:
            continue
        path = args.corpus / name
        res = RepoResult(name)
        head = git_head(path) if path.is_dir() else None
        if head is None:
            res.status = f"missing: clone {entry['url']} at {entry['commit']} into {path}"
        elif head != entry["commit"]:
            res.status = f"wrong commit {head[:12]} (pinned {entry['commit'][:12]})"
        if res.status != "ok":
            results.append(res)
            continue
        res.findings, res.files, res.lines, res.seconds, res.cpu_seconds = lint_repo(path)
        (args.out / f"{name}.json").write_text(json.dumps(res.findings, indent=1) + "\n")
        if not args.no_fix:
            res.fix = fix_safety(path)
        results.append(res)

    report: list[str] = []

    def emit(text: str = "", end: str = "\n") -> None:
        print(text, end=end)
        report.append(text + ("\n" if end else ""))

    emit(
        f"{'repository':30} {'files':>5} {'lines':>7} {'finds':>5} {'l/s':>6} {'cpu l/s':>7}",
        end="",
    )
    emit("  fix safety")
    for res in results:
        if res.status != "ok":
            emit(f"{res.name:30} {res.status}")
            continue
        speed = res.lines / res.seconds if res.seconds else 0.0
        cpu_speed = res.lines / res.cpu_seconds if res.cpu_seconds else 0.0
        fx = res.fix
        if not fx:
            fix_text = "(not run)"
        else:
            fix_text = (
                f"{'ok' if fx['ok'] else 'BROKEN'}: {fx['fixes_applied']} fixes in "
                f"{fx['files_changed']} files, {len(fx['not_compiling'])} not compiling, "
                f"{len(fx['new_ruff'])} new F821/F811/F401, second run changed "
                f"{len(fx['second_run_changed'])}"
            )
        emit(
            f"{res.name:30} {res.files:5} {res.lines:7} {len(res.findings):5} {speed:6.0f} "
            f"{cpu_speed:7.0f}  {fix_text}"
        )
        for problem in [*fx.get("not_compiling", []), *fx.get("new_ruff", [])][:10]:
            emit(f"{'':32}{problem}")
    ran = [r for r in results if r.status == "ok"]
    lines = sum(r.lines for r in ran)
    seconds = sum(r.seconds for r in ran)
    cpu = sum(r.cpu_seconds for r in ran)
    if seconds and cpu:
        emit(f"{'total':30} {sum(r.files for r in ran):5} {lines:7} ", end="")
        emit(
            f"{sum(len(r.findings) for r in ran):5} {lines / seconds:6.0f} {lines / cpu:7.0f}",
            end="",
        )
        emit("  (one process; l/s is wall time, cpu l/s this process's CPU time)")
    scores = score(ran)
    emit()
    emit(f"{'rule':8} {'true':>5} {'false':>6} {'debat.':>6} {'d->f':>5} ", end="")
    emit(f"{'unlab.':>6} {'prec.':>7}")
    for code, row in scores["per_rule"].items():
        emit(
            f"{code:8} {row['true']:5} {row['false']:6} {row['debatable']:6} "
            f"{row['debatable_counted_false']:5} {row['unlabelled']:6} {pct(row['precision'])}"
        )
    emit(f"overall precision {pct(scores['overall_precision'])}")
    emit(
        f"recall of frozen true labels {pct(scores['recall'])} "
        f"({scores['recall_hit']}/{scores['recall_total']})"
    )
    for miss in scores["missed"]:
        emit(f"  missed: {miss}")
    for miss in scores["later_missed"]:
        emit(f"  no longer reported (a later, unfrozen true label): {miss}")
    if args.show_unlabelled:
        for row in scores["unlabelled"]:
            emit(f"  unlabelled: {row}")
    summary = {
        "repositories": [
            {
                "name": r.name,
                "status": r.status,
                "files": r.files,
                "lines": r.lines,
                "seconds": r.seconds,
                "cpu_seconds": r.cpu_seconds,
                "findings": len(r.findings),
                "fix": r.fix,
            }
            for r in results
        ],
        **scores,
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    if args.docs is not None:
        args.docs.write_text(
            "# `pooltender lint` on the real-world corpus: latest run\n\n"
            "Written by `python bench/lint_corpus/run.py --docs docs/rules/corpus.md`. "
            "Precision counts only labelled findings (true / (true + false), debatable left "
            "out beyond a 20 % cap); recall is over the frozen true labels judged before issue "
            "11's rule changes. Lines/s is one process on a shared, loaded 2-core machine: "
            "rough.\n\n```text\n" + "".join(report) + "```\n",
            encoding="utf-8",
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
