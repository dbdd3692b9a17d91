"""Render violations as text, JSON or SARIF 2.1.0.

Text is one ``path:line:col: CODE message`` per line, sorted (the order of
:class:`~pooltender.lint.base.Violation`). JSON is a list of objects with the same fields plus
end position, severity and fix safety. SARIF is a single-run log with every rule described in
``tool.driver.rules`` and results pointing at them by id and index, which is what code-scanning
services need to show rule help; it validates against the official 2.1.0 schema (tested).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import PurePath
from typing import Any, Literal

from pooltender.lint.base import Violation
from pooltender.lint.rules import ALL_CODES, BY_CODE, describe, severity

OutputFormat = Literal["text", "json", "sarif"]
FORMATS: tuple[OutputFormat, ...] = ("text", "json", "sarif")
INFORMATION_URI = "https://github.com/pooltender/pooltender/blob/main/docs/rules/README.md"


def to_text(violations: Sequence[Violation]) -> str:
    return "".join(v.format() + "\n" for v in sorted(violations))


def to_json(violations: Sequence[Violation]) -> str:
    rows = [
        {
            "path": v.path,
            "line": v.line,
            "column": v.col,
            "end_line": v.end_line or v.line,
            "end_column": v.end_col or v.col,
            "code": v.code,
            "message": v.message,
            "severity": v.severity,
            "fix": v.fix_safety,
        }
        for v in sorted(violations)
    ]
    return json.dumps(rows, indent=2) + "\n"


def _rule_descriptor(code: str) -> dict[str, Any]:
    rule = BY_CODE.get(code)
    descriptor: dict[str, Any] = {
        "id": code,
        "name": rule.name if rule else code.lower(),
        "shortDescription": {"text": describe(code)},
        "defaultConfiguration": {"level": "warning" if severity(code) == "warning" else "error"},
        "helpUri": INFORMATION_URI.replace("README.md", f"{code}.md"),
    }
    if rule is not None:
        descriptor["fullDescription"] = {"text": rule.summary}
        descriptor["help"] = {"text": rule.summary, "markdown": rule.doc}
    return descriptor


def to_sarif(violations: Sequence[Violation], version: str = "0.1.0") -> str:
    index = {code: i for i, code in enumerate(ALL_CODES)}
    results = []
    for v in sorted(violations):
        region: dict[str, int] = {"startLine": v.line, "startColumn": v.col}
        if v.end_line:
            region["endLine"] = v.end_line
            region["endColumn"] = max(v.end_col, 1)
        results.append(
            {
                "ruleId": v.code,
                "ruleIndex": index[v.code],
                "level": "warning" if v.severity == "warning" else "error",
                "message": {"text": v.message},
                "locations": [
                    {
                        "physicalLocation": {
                            "artifactLocation": {"uri": PurePath(v.path).as_posix()},
                            "region": region,
                        }
                    }
                ],
            }
        )
    log = {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "pooltender-lint",
                        "version": version,
                        "informationUri": INFORMATION_URI,
                        "rules": [_rule_descriptor(code) for code in ALL_CODES],
                    }
                },
                "results": results,
            }
        ],
    }
    return json.dumps(log, indent=2) + "\n"


def render(violations: Sequence[Violation], output_format: OutputFormat) -> str:
    if output_format == "json":
        return to_json(violations)
    if output_format == "sarif":
        return to_sarif(violations)
    return to_text(violations)
