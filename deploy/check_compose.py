#!/usr/bin/env python3
"""Checks of deploy/compose that its JSON schema cannot make:

- every relative path (bind mounts, build context, Dockerfile) exists;
- depends_on names services of the file;
- images carry a pinned version tag (no :latest, no bare name);
- published ports are bound to 127.0.0.1;
- forewarn runs read-only, without capabilities, with its state on a named
  volume at the config's state.dir and its rules at rules.dir;
- Prometheus mounts the alerts and a config that scrapes forewarn as job
  "forewarn"; Grafana mounts its provisioning and the dashboard folder the
  dashboard provider reads.

    python3 deploy/check_compose.py [deploy/compose/docker-compose.yml]

Needs PyYAML. Exit 1 on any problem, listing them all.
"""

import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def main():
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "deploy/compose/docker-compose.yml"
    base = path.resolve().parent
    doc = yaml.safe_load(path.read_text())
    services = doc.get("services", {})
    named_volumes = set(doc.get("volumes") or {})
    problems = []
    p = problems.append

    def binds(svc):
        """(source, target, options) of each short-syntax volume."""
        for v in svc.get("volumes", []):
            parts = v.split(":")
            yield parts[0], parts[1], parts[2] if len(parts) > 2 else ""

    for name, svc in services.items():
        w = f"service {name}"
        image = svc.get("image", "")
        if "build" not in svc:
            tag = image.rsplit(":", 1)[1] if ":" in image.split("/")[-1] else ""
            if not tag or tag == "latest":
                p(f"{w}: image {image!r} has no pinned version tag")
        else:
            build = svc["build"]
            ctx = (base / build.get("context", ".")).resolve()
            if not ctx.is_dir():
                p(f"{w}: build context {build.get('context')!r} does not exist")
            elif not (ctx / build.get("dockerfile", "Dockerfile")).is_file():
                p(f"{w}: dockerfile {build.get('dockerfile')!r} does not exist in the context")
        deps = svc.get("depends_on", [])
        for dep in deps if isinstance(deps, list) else deps.keys():
            if dep not in services:
                p(f"{w}: depends_on {dep!r}, which is not a service")
        for src, target, _ in binds(svc):
            if src.startswith((".", "/")):
                if not (base / src).exists():
                    p(f"{w}: mounts {src!r}, which does not exist (relative to {base})")
            elif src not in named_volumes:
                p(f"{w}: named volume {src!r} is not declared under volumes:")
        for port in svc.get("ports", []):
            if not str(port).startswith("127.0.0.1:"):
                p(f"{w}: port {port!r} is published on every interface; bind it to 127.0.0.1")

    fw = services.get("forewarn")
    if not fw:
        p("no forewarn service")
    else:
        if fw.get("read_only") is not True:
            p("service forewarn: read_only must be true")
        if "ALL" not in fw.get("cap_drop", []):
            p("service forewarn: cap_drop must hold ALL")
        mounts = {target: (src, opts) for src, target, opts in binds(fw)}
        cfg_src = mounts.get("/etc/forewarn/forewarn.toml")
        if not cfg_src:
            p("service forewarn: nothing mounted at /etc/forewarn/forewarn.toml")
        else:
            cfg = tomllib.loads((base / cfg_src[0]).read_text())
            state = mounts.get(cfg.get("state", {}).get("dir"))
            if not state or state[0] not in named_volumes:
                p(f"service forewarn: state.dir {cfg.get('state', {}).get('dir')!r} is not a named volume")
            rules = mounts.get(cfg.get("rules", {}).get("dir"))
            if not rules or not (base / rules[0] / "templates").is_dir():
                p(f"service forewarn: rules.dir {cfg.get('rules', {}).get('dir')!r} is not a mounted rules folder")
            elif rules[1] != "ro":
                p("service forewarn: mount the rules read-only")
            if not str(cfg.get("admin", {}).get("listen", "")).startswith("0.0.0.0:"):
                p("forewarn.toml: admin.listen must be 0.0.0.0 in a container")

    prom = services.get("prometheus")
    if prom:
        mounts = {target: src for src, target, _ in binds(prom)}
        cfg_src = mounts.get("/etc/prometheus/prometheus.yml")
        if not cfg_src:
            p("service prometheus: no /etc/prometheus/prometheus.yml mounted")
        else:
            cfg = yaml.safe_load((base / cfg_src).read_text())
            for rf in cfg.get("rule_files", []):
                if f"/etc/prometheus/{rf}" not in mounts:
                    p(f"prometheus.yml: rule file {rf!r} is not mounted at /etc/prometheus/{rf}")
            jobs = {j["job_name"]: j for j in cfg.get("scrape_configs", [])}
            targets = [t for sc in jobs.get("forewarn", {}).get("static_configs", []) for t in sc.get("targets", [])]
            if not any(t.split(":")[0] == "forewarn" for t in targets):
                p('prometheus.yml: no job "forewarn" scraping the forewarn service (the ForewarnDown alert selects job="forewarn")')

    graf = services.get("grafana")
    if graf:
        mounts = {target: src for src, target, _ in binds(graf)}
        prov = mounts.get("/etc/grafana/provisioning")
        if not prov:
            p("service grafana: no provisioning mounted at /etc/grafana/provisioning")
        else:
            for f in sorted((base / prov / "dashboards").glob("*.yml")):
                for provider in yaml.safe_load(f.read_text()).get("providers", []):
                    dpath = provider.get("options", {}).get("path")
                    src = mounts.get(dpath)
                    if not src or not list((base / src).glob("*.json")):
                        p(f"{f.name}: provider {provider.get('name')!r} reads {dpath!r}, where no dashboard JSON is mounted")
            dss = []
            for f in sorted((base / prov / "datasources").glob("*.yml")):
                dss += yaml.safe_load(f.read_text()).get("datasources", [])
            if not any(d.get("type") == "prometheus" and "prometheus:9090" in d.get("url", "") for d in dss):
                p("grafana provisioning: no Prometheus data source pointing at the prometheus service")

    for prob in problems:
        print(f"error: {prob}", file=sys.stderr)
    if not problems:
        print(f"compose cross-checks: ok ({len(services)} services)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
