#!/usr/bin/env python
"""Collect ``eval_quality.py --json`` results into one Markdown table (rows in the order given).

    python benchmarks/quality_table.py benchmarks/results/quality/*.json > benchmarks/results/quality.md

Rows come from ``eval_quality.markdown`` (one formatting in one place); the command of every row is
listed under the table.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from eval_quality import markdown  # noqa: E402


def table(paths):
    head, rows, commands = None, [], []
    for path in paths:
        with open(path) as f:
            res = json.load(f)
        lines = markdown(res).splitlines()
        head = head or lines[:2]
        rows += lines[2:]
        commands.append(f"- `{os.path.basename(path)}`: `{res.get('command', '(command not recorded)')}`")
    return "\n".join([*(head or []), *rows, "", "Commands:", "", *commands])


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit("usage: quality_table.py RESULT.json [...]")
    print(table(sys.argv[1:]))
