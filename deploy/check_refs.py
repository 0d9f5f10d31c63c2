#!/usr/bin/env python3
"""Checks that the Grafana dashboard and the Prometheus alerts only use
metrics (and labels) that forewarn defines, and that both are well formed.

    python3 deploy/check_refs.py [--metrics src/metrics.rs] [--dashboard F] [--alerts F] [--readme F]

The metric definitions are read from the string literals in src/metrics.rs,
so a renamed metric or label breaks this check rather than a dashboard
panel in production. Needs PyYAML. Exit 1 on any problem, listing them all.
"""

import argparse
import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
NAME = re.compile(r"^forewarn_[a-z0-9_]+$")
# Labels every scraped series has, whatever the metric.
TARGET_LABELS = {"job", "instance"}
SEVERITIES = {"critical", "warning", "info"}


def parse_metrics(path):
    """{name: {"labels": set, "histogram": bool}} from src/metrics.rs."""
    src = path.read_text()
    tokens = [(m.start(), m.end(), m.group(0)) for m in STRING.finditer(src)]
    defined = {}
    for i, (start, end, lit) in enumerate(tokens):
        name = lit[1:-1]
        if not NAME.match(name):
            continue
        before = src[max(0, start - 80) : start]
        histogram = "HistogramOpts::new(" in before or "histogram(" in before
        # Scan to the end of the definition (the first `;` outside string
        # literals) for the label list `&[...]`.
        labels = set()
        pos = end
        j = i + 1
        while True:
            next_lit = tokens[j] if j < len(tokens) else None
            stop = next_lit[0] if next_lit else len(src)
            chunk = src[pos:stop]
            if ";" in chunk:
                chunk = chunk[: chunk.index(";")]
                if "&[" in chunk:
                    labels |= label_list(src, pos + chunk.index("&["))
                break
            if "&[" in chunk:
                labels |= label_list(src, pos + chunk.index("&["))
                break
            if next_lit is None:
                break
            pos = next_lit[1]
            j += 1
        if name in defined:
            continue
        defined[name] = {"labels": labels, "histogram": histogram}
    return defined


def label_list(src, at):
    close = src.index("]", at)
    return {m.group(0)[1:-1] for m in STRING.finditer(src[at:close])}


SELECTOR = re.compile(r"\b(forewarn_[a-z0-9_]+)\s*(\{[^}]*\})?")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)")
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def check_expr(expr, where, defined, problems):
    """Every forewarn_* name is defined, every label it is matched or
    grouped on exists. Returns the metric names used."""
    used = set()
    text = expr
    # Label values may hold anything; keep their quotes, drop their content.
    scrubbed = STRING.sub('""', text)
    labels_in_expr = set(TARGET_LABELS)
    for m in SELECTOR.finditer(scrubbed):
        name, braces = m.group(1), m.group(2)
        base, suffix = name, ""
        for s in ("_bucket", "_sum", "_count"):
            if name.endswith(s) and name[: -len(s)] in defined and defined[name[: -len(s)]]["histogram"]:
                base, suffix = name[: -len(s)], s
                break
        if base not in defined:
            problems.append(f"{where}: {name} is not a metric defined in src/metrics.rs")
            continue
        used.add(base)
        allowed = defined[base]["labels"] | TARGET_LABELS | ({"le"} if suffix == "_bucket" else set())
        labels_in_expr |= allowed
        for lm in MATCHER.finditer(braces or ""):
            if lm.group(1) not in allowed:
                problems.append(
                    f"{where}: {name} has no label {lm.group(1)!r} (its labels: {', '.join(sorted(defined[base]['labels'])) or 'none'})"
                )
    if used:
        for gm in GROUPING.finditer(scrubbed):
            for label in filter(None, (x.strip() for x in gm.group(2).split(","))):
                if label not in labels_in_expr:
                    problems.append(f"{where}: {gm.group(1)} ({label}) names a label none of its metrics has")
    return used


def check_dashboard(path, defined, problems):
    try:
        dash = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        problems.append(f"{path}: not valid JSON: {e}")
        return set()
    for key in ("title", "uid"):
        if not dash.get(key):
            problems.append(f"{path}: the dashboard has no {key}")
    used = set()
    ids = set()

    def panels(items):
        for p in items:
            yield p
            yield from panels(p.get("panels", []))

    all_panels = list(panels(dash.get("panels", [])))
    if not all_panels:
        problems.append(f"{path}: the dashboard has no panels")
    for p in all_panels:
        title = p.get("title") or f"panel id {p.get('id')}"
        where = f"{path.name}: panel {title!r}"
        if p.get("id") in ids:
            problems.append(f"{where}: duplicate panel id {p.get('id')}")
        ids.add(p.get("id"))
        if "gridPos" not in p:
            problems.append(f"{where}: no gridPos")
        if p.get("type") == "row":
            continue
        ds = p.get("datasource")
        if not isinstance(ds, dict) or not ds.get("uid"):
            problems.append(f"{where}: no datasource (set one with a uid, e.g. ${{datasource}})")
        targets = p.get("targets") or []
        if not targets:
            problems.append(f"{where}: no queries")
        for t in targets:
            if not t.get("expr"):
                problems.append(f"{where}: a query without expr")
                continue
            used |= check_expr(t["expr"], where, defined, problems)
    for var in dash.get("templating", {}).get("list", []):
        q = var.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        if var.get("type") == "query" and isinstance(q, str):
            used |= check_expr(q, f"{path.name}: variable ${var.get('name')}", defined, problems)
    return used


def check_alerts(path, readme, defined, problems):
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        problems.append(f"{path}: not valid YAML: {e}")
        return set()
    readme_text = readme.read_text() if readme.exists() else ""
    used = set()
    names = set()
    for group in doc.get("groups", []):
        for rule in group.get("rules", []):
            name = rule.get("alert") or rule.get("record")
            where = f"{path.name}: {name}"
            if rule.get("alert"):
                if name in names:
                    problems.append(f"{where}: alert defined twice")
                names.add(name)
                sev = (rule.get("labels") or {}).get("severity")
                if sev not in SEVERITIES:
                    problems.append(f"{where}: severity label {sev!r} is not one of {sorted(SEVERITIES)}")
                ann = rule.get("annotations") or {}
                for key in ("summary", "description", "runbook"):
                    if not ann.get(key):
                        problems.append(f"{where}: no {key} annotation")
                anchor = f"deploy/README.md#{name.lower()}"
                if ann.get("runbook") and ann["runbook"] != anchor:
                    problems.append(f"{where}: runbook should be {anchor!r}")
                if not re.search(rf"^###\s+{re.escape(name)}\s*$", readme_text, re.M):
                    problems.append(f"{where}: {readme} has no runbook section '### {name}'")
            used |= check_expr(rule.get("expr", ""), where, defined, problems)
    return used


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--metrics", type=Path, default=ROOT / "src/metrics.rs")
    ap.add_argument("--dashboard", type=Path, default=ROOT / "deploy/grafana/forewarn-dashboard.json")
    ap.add_argument("--alerts", type=Path, default=ROOT / "deploy/prometheus/alerts.yml")
    ap.add_argument("--readme", type=Path, default=ROOT / "deploy/README.md")
    args = ap.parse_args()

    defined = parse_metrics(args.metrics)
    problems = []
    if len(defined) < 10:
        problems.append(f"{args.metrics}: found only {len(defined)} metric definitions; has the file's layout changed?")
    in_dashboard = check_dashboard(args.dashboard, defined, problems)
    in_alerts = check_alerts(args.alerts, args.readme, defined, problems)
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    if problems:
        return 1
    unused = sorted(set(defined) - in_dashboard - in_alerts)
    print(
        f"metric references: ok ({len(defined)} metrics defined, {len(in_dashboard)} used by the dashboard, "
        f"{len(in_alerts)} by the alerts; on neither: {', '.join(unused) or 'none'})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
