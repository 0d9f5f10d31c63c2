#!/usr/bin/env python3
"""Checks the rendered Kubernetes manifests beyond their schemas.

    kubectl kustomize deploy/k8s > rendered.yaml
    python3 deploy/check_k8s.py rendered.yaml --secret deploy/k8s/secret.yaml \
        --core-out core.yaml --materialize DIR

- the ServiceMonitor and PrometheusRule, which have no schema bundled with
  kubernetes-validate (CRDs), get a shape check here;
- the objects must fit together: the Service the StatefulSet names, the
  ConfigMaps and Secret keys the pod mounts, the ports the probes and the
  ServiceMonitor use, the rules volume's items against the ConfigMap keys;
- the hardening the issue asks for stays: non-root, read-only root
  filesystem, no capabilities, RuntimeDefault seccomp, resource requests,
  probes on /healthz and /readyz, a PVC mounted at state.dir;
- --core-out writes the other objects, for kubernetes-validate;
- --materialize writes what the pod would see (config, rules tree, secret
  files) so `forewarn check` can validate them as deployed.

Needs PyYAML. Exit 1 on any problem, listing them all.
"""

import argparse
import re
import sys
import tomllib
from pathlib import Path, PurePosixPath

import yaml

CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}
DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")


def labels_match(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def mounts_under(mounts, path):
    """The mount whose mountPath holds `path`, if any."""
    best = None
    for m in mounts:
        mp = m["mountPath"].rstrip("/")
        if path == mp or path.startswith(mp + "/"):
            if best is None or len(mp) > len(best["mountPath"]):
                best = m
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rendered", type=Path)
    ap.add_argument("--secret", type=Path, required=True, help="the example Secret manifest")
    ap.add_argument("--core-out", type=Path)
    ap.add_argument("--materialize", type=Path)
    args = ap.parse_args()

    docs = [d for d in yaml.safe_load_all(args.rendered.read_text()) if d]
    secret = yaml.safe_load(args.secret.read_text())
    problems = []
    p = problems.append

    def of_kind(kind):
        return [d for d in docs if d.get("kind") == kind]

    core = [d for d in docs if (d.get("apiVersion"), d.get("kind")) not in CRDS]
    crds = [d for d in docs if (d.get("apiVersion"), d.get("kind")) in CRDS]
    for d in docs:
        if "namespace" in d.get("metadata", {}):
            p(f"{d['kind']}/{d['metadata']['name']}: sets a namespace; the manifests are namespace-agnostic")

    # ---- the StatefulSet and its pod
    sts_list = of_kind("StatefulSet")
    if len(sts_list) != 1:
        p(f"expected one StatefulSet, found {len(sts_list)}")
        return report(problems)
    sts = sts_list[0]
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    pod_labels = spec["template"]["metadata"].get("labels", {})
    where = f"StatefulSet/{sts['metadata']['name']}"
    if not labels_match(spec["selector"].get("matchLabels"), pod_labels):
        p(f"{where}: selector does not match the pod template's labels")
    services = {s["metadata"]["name"]: s for s in of_kind("Service")}
    gov = services.get(spec.get("serviceName"))
    if gov is None:
        p(f"{where}: serviceName {spec.get('serviceName')!r} is not a Service in the manifests")
    else:
        if gov["spec"].get("clusterIP") != "None":
            p(f"Service/{gov['metadata']['name']}: the governing Service of a StatefulSet should be headless (clusterIP: None)")
        if not labels_match(gov["spec"].get("selector"), pod_labels):
            p(f"Service/{gov['metadata']['name']}: selector does not match the forewarn pods")

    psc = pod.get("securityContext", {})
    if psc.get("runAsNonRoot") is not True:
        p(f"{where}: pod securityContext.runAsNonRoot must be true")
    if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        p(f"{where}: pod seccompProfile must be RuntimeDefault")
    if pod.get("automountServiceAccountToken") is not False:
        p(f"{where}: automountServiceAccountToken should be false (forewarn never calls the API server)")
    if pod.get("terminationGracePeriodSeconds", 30) < 30:
        p(f"{where}: terminationGracePeriodSeconds below 30 cuts the SIGTERM drain short")

    containers = pod.get("containers", [])
    all_containers = pod.get("initContainers", []) + containers
    for c in all_containers:
        cw = f"{where}: container {c['name']}"
        sc = c.get("securityContext", {})
        if sc.get("readOnlyRootFilesystem") is not True:
            p(f"{cw}: readOnlyRootFilesystem must be true")
        if sc.get("allowPrivilegeEscalation") is not False:
            p(f"{cw}: allowPrivilegeEscalation must be false")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            p(f"{cw}: capabilities must drop ALL")
        if sc.get("capabilities", {}).get("add"):
            p(f"{cw}: adds capabilities")
        if not c.get("resources", {}).get("requests"):
            p(f"{cw}: no resource requests")

    main_c = next((c for c in containers if c["name"] == "forewarn"), None)
    if main_c is None:
        p(f"{where}: no container named forewarn")
        return report(problems)
    port_names = {pt.get("name"): pt["containerPort"] for pt in main_c.get("ports", [])}
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
        get = main_c.get(probe, {}).get("httpGet")
        if not get:
            p(f"{where}: the forewarn container has no {probe} (httpGet {path})")
            continue
        if get.get("path") != path:
            p(f"{where}: {probe} asks {get.get('path')!r}, expected {path!r}")
        if get.get("port") not in port_names and get.get("port") not in port_names.values():
            p(f"{where}: {probe} port {get.get('port')!r} is not a port of the container")

    # Volumes and what they refer to.
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    claim_names = {t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])}
    configmaps = {c["metadata"]["name"]: c for c in of_kind("ConfigMap")}
    for c in all_containers:
        for m in c.get("volumeMounts", []):
            if m["name"] not in volumes and m["name"] not in claim_names:
                p(f"{where}: container {c['name']} mounts {m['name']!r}, which is neither a volume nor a volumeClaimTemplate")
    for name, v in volumes.items():
        if "configMap" in v:
            cm_name = v["configMap"]["name"]
            cm = configmaps.get(cm_name)
            if cm is None:
                p(f"{where}: volume {name} names ConfigMap {cm_name!r}, which is not in the manifests")
                continue
            items = v["configMap"].get("items")
            if items is not None:
                keys = set(cm.get("data", {}))
                item_keys = [i["key"] for i in items]
                for k in sorted(keys - set(item_keys)):
                    p(f"{where}: volume {name}: ConfigMap key {k!r} has no item, so the pod never sees it (re-run deploy/k8s/render.py)")
                for k in sorted(set(item_keys) - keys):
                    p(f"{where}: volume {name}: item {k!r} is not a key of ConfigMap {cm_name}")
                paths = [i["path"] for i in items]
                if len(paths) != len(set(paths)):
                    p(f"{where}: volume {name}: two items share a path")
        if "secret" in v and v["secret"]["secretName"] != secret["metadata"]["name"]:
            p(f"{where}: volume {name} names Secret {v['secret']['secretName']!r}; the example Secret is {secret['metadata']['name']!r}")

    # The config, as the pod reads it.
    config_path = None
    argv = main_c.get("args", [])
    if "--config" in argv:
        config_path = argv[argv.index("--config") + 1]
    mounts = main_c.get("volumeMounts", [])
    config_text = None
    if not config_path:
        p(f"{where}: the forewarn container's args name no --config")
    else:
        m = mounts_under(mounts, config_path)
        v = volumes.get(m["name"]) if m else None
        if not v or "configMap" not in v:
            p(f"{where}: --config {config_path} is not on a ConfigMap volume")
        else:
            key = str(PurePosixPath(config_path).relative_to(m["mountPath"]))
            config_text = configmaps.get(v["configMap"]["name"], {}).get("data", {}).get(key)
            if config_text is None:
                p(f"{where}: ConfigMap {v['configMap']['name']} has no key {key!r} for --config {config_path}")
    config = tomllib.loads(config_text) if config_text else {}
    secret_keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
    secret_files = {}
    if config:
        state_dir = config.get("state", {}).get("dir")
        m = mounts_under(mounts, state_dir or "")
        if not m or m["name"] not in claim_names:
            p(f"{where}: state.dir {state_dir!r} is not on a volumeClaimTemplate (the state must persist)")
        rules_dir = config.get("rules", {}).get("dir")
        m = mounts_under(mounts, rules_dir or "")
        if not m or "configMap" not in volumes.get(m["name"], {}):
            p(f"{where}: rules.dir {rules_dir!r} is not on a ConfigMap volume")
        listen = config.get("admin", {}).get("listen", "")
        if not listen.startswith("0.0.0.0:") or int(listen.rsplit(":", 1)[1]) != port_names.get("metrics"):
            p(f"{where}: admin.listen {listen!r} must be 0.0.0.0 on the container's metrics port {port_names.get('metrics')}")
        # Every *_file secret the config names must be a key of the mounted Secret.
        refs = [("admin.token_file", config.get("admin", {}).get("token_file"))]
        for ch_name, ch in config.get("channels", {}).items():
            for k in ("password_file", "secret_file"):
                refs.append((f"channels.{ch_name}.{k}", ch.get(k)))
        for key, path in refs:
            if not path:
                continue
            m = mounts_under(mounts, path)
            v = volumes.get(m["name"]) if m else None
            if not v or "secret" not in v:
                p(f"{where}: {key} = {path!r} is not on a Secret volume")
                continue
            skey = str(PurePosixPath(path).relative_to(m["mountPath"]))
            if skey not in secret_keys:
                p(f"{where}: {key} = {path!r}: the Secret has no key {skey!r}")
            secret_files[key] = skey

    # ---- CRDs
    for d in crds:
        name = f"{d['kind']}/{d['metadata']['name']}"
        s = d.get("spec") or {}
        if d["kind"] == "ServiceMonitor":
            sel = s.get("selector", {}).get("matchLabels", {})
            targets = [sv for sv in services.values() if labels_match(sel, sv["metadata"].get("labels", {}))]
            if not targets:
                p(f"{name}: selector {sel} matches no Service in the manifests")
            eps = s.get("endpoints") or []
            if not eps:
                p(f"{name}: no endpoints")
            for ep in eps:
                for k in ep:
                    if k not in {"port", "path", "interval", "scrapeTimeout", "scheme", "honorLabels", "relabelings", "metricRelabelings"}:
                        p(f"{name}: endpoint key {k!r} is not one this check knows (typo?)")
                if not any(ep.get("port") in {pt.get("name") for pt in sv["spec"].get("ports", [])} for sv in targets):
                    p(f"{name}: endpoint port {ep.get('port')!r} is not a named port of the selected Service")
                if not str(ep.get("path", "/metrics")).startswith("/"):
                    p(f"{name}: path must start with /")
                for k in ("interval", "scrapeTimeout"):
                    if k in ep and not DURATION.match(str(ep[k])):
                        p(f"{name}: {k} {ep[k]!r} is not a Prometheus duration")
        elif d["kind"] == "PrometheusRule":
            groups = s.get("groups") or []
            if not groups:
                p(f"{name}: no groups")
            for g in groups:
                if not g.get("name") or not g.get("rules"):
                    p(f"{name}: a group without a name or rules")
                for r in g.get("rules", []):
                    if bool(r.get("alert")) == bool(r.get("record")) or not isinstance(r.get("expr"), str):
                        p(f"{name}: group {g.get('name')}: each rule needs exactly one of alert/record, and an expr")
                    for k in ("labels", "annotations"):
                        if not all(isinstance(x, str) for x in (r.get(k) or {}).values()):
                            p(f"{name}: {r.get('alert') or r.get('record')}: {k} must be strings")
                    if "for" in r and not DURATION.match(str(r["for"])):
                        p(f"{name}: {r.get('alert')}: for {r['for']!r} is not a Prometheus duration")

    if args.core_out:
        args.core_out.write_text(yaml.safe_dump_all(core, sort_keys=False))
    if args.materialize and config_text:
        try:
            materialize(args.materialize, config_text, config, mounts, volumes, configmaps, secret, secret_files)
        except (KeyError, TypeError, OSError) as e:
            p(f"cannot materialize the pod's config and rules for forewarn check: {e!r}")

    if not problems:
        kinds = ", ".join(sorted({d["kind"] for d in docs}))
        shaped = ", ".join(sorted(d["kind"] for d in crds)) or "none"
        print(f"k8s cross-checks: ok ({len(docs)} objects: {kinds}; shape-checked here, no bundled schema: {shaped})")
    return report(problems)


def materialize(out, config_text, config, mounts, volumes, configmaps, secret, secret_files):
    """Writes what the pod sees: the config, the rules tree (through the
    volume's items), the secret files, and an env file pointing the
    config's *_file keys at them."""
    (out / "rules").mkdir(parents=True, exist_ok=True)
    (out / "forewarn.toml").write_text(config_text)
    rules_vol = volumes[mounts_under(mounts, config["rules"]["dir"])["name"]]["configMap"]
    data = configmaps[rules_vol["name"]]["data"]
    for item in rules_vol.get("items") or [{"key": k, "path": k} for k in data]:
        f = out / "rules" / item["path"]
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(data[item["key"]])
    (out / "secrets").mkdir(exist_ok=True)
    values = dict(secret.get("stringData", {}))
    for skey in set(secret_files.values()):
        (out / "secrets" / skey).write_text(values.get(skey, "placeholder"))
    # KEY=PATH lines for the environment of `forewarn check`.
    env = []
    for key, skey in secret_files.items():
        env.append("FOREWARN__" + key.upper().replace(".", "__") + f"={out / 'secrets' / skey}")
    (out / "env").write_text("\n".join(env) + "\n")


def report(problems):
    for prob in problems:
        print(f"error: {prob}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
