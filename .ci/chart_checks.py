#!/usr/bin/env python3
"""Chart checks, all real, no cluster needed (run by .ci/run; see docs/install.md):

1. helm lint and render with Helm's own Go engine (helm-python-sdk wraps the Helm SDK) for the
   default values and every value set in charts/cliscale/ci/;
2. every rendered object (and the CRD, and the operator's runner Job) validated against the
   Kubernetes OpenAPI schemas of the oldest and newest supported versions (1.33, 1.37: the range k8s-openapi 0.29 covers) (kubernetes-validate);
3. values.schema.json rejects bad values;
4. policy: every pod meets the restricted Pod Security Standard; runner NetworkPolicies admit
   only gateway pods on the runner port; RBAC grants nothing beyond the documented verbs;
5. the Dockerfiles (which cannot be built here): every base image pinned to a version, the
   final stage running as a numeric non-root user, no secrets passed as build arguments or
   environment.
"""
import re
import base64
import copy
import json
import pathlib
import subprocess
import sys

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "cliscale"
K8S_VERSIONS = ["1.33.0", "1.37.0"]
RUNNER_PORT = 7681
API_PORT = 8080
FAILURES = []


def fail(msg):
    FAILURES.append(msg)
    print(f"FAIL: {msg}")


def render(values, name="cs"):
    chart = helm.Chart.load(str(CHART))
    chart.validate_schema(values)
    out = chart.render(values, name=name, namespace="cliscale", is_install=True)
    docs = []
    for path, text in sorted(out.items()):
        if not path.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append((path, doc))
    return docs


def pod_specs(obj):
    kind = obj["kind"]
    if kind in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
        yield obj["spec"]["template"]["spec"]
    elif kind == "Pod":
        yield obj["spec"]


def check_restricted(where, spec):
    """The restricted Pod Security Standard (as of Kubernetes 1.33), control by control."""
    psc = spec.get("securityContext", {})
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            fail(f"{where}: {flag}")
    for v in spec.get("volumes", []):
        allowed = {"name", "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                   "persistentVolumeClaim", "projected", "secret"}
        if set(v) - allowed:
            fail(f"{where}: volume type {set(v) - allowed}")
    containers = spec.get("containers", []) + spec.get("initContainers", [])
    for c in containers:
        sc = c.get("securityContext", {})
        name = f"{where}/{c['name']}"
        if sc.get("privileged"):
            fail(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            fail(f"{name}: allowPrivilegeEscalation must be false")
        if not (sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True):
            fail(f"{name}: runAsNonRoot must be true")
        if sc.get("runAsUser", psc.get("runAsUser")) == 0:
            fail(f"{name}: runs as UID 0")
        seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            fail(f"{name}: seccompProfile must be RuntimeDefault or Localhost")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            fail(f"{name}: capabilities must drop ALL")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            fail(f"{name}: adds capabilities {caps.get('add')}")
        for p in c.get("ports", []):
            if p.get("hostPort"):
                fail(f"{name}: hostPort")
        # Ours, beyond the standard: read-only root filesystems.
        if sc.get("readOnlyRootFilesystem") is not True:
            fail(f"{name}: readOnlyRootFilesystem must be true")


# The documented RBAC (docs/operator.md); anything else is a failure.
ALLOWED_RULES = {
    "operator": {
        ("cliscale.dev", "commandsessions"): {"get", "list", "watch", "create", "patch", "delete"},
        ("cliscale.dev", "commandsessions/status"): {"patch"},
        ("cliscale.dev", "commandtemplates"): {"get", "list", "watch", "create", "patch", "delete"},
        ("cliscale.dev", "commandschedules"): {"get", "list", "watch", "create", "patch", "delete"},
        ("cliscale.dev", "commandschedules/status"): {"patch"},
        ("batch", "jobs"): {"get", "list", "watch", "create", "delete"},
        ("", "pods"): {"list", "watch"},
        ("", "events"): {"list", "watch"},
        ("events.k8s.io", "events"): {"create", "patch"},
        ("coordination.k8s.io", "leases"): {"get", "create", "patch"},
        ("", "configmaps"): {"get", "create", "patch"},
        ("", "secrets"): {"get", "list", "create", "patch", "delete"},
    },
    "gateway": {("cliscale.dev", "commandsessions"): {"get", "list", "watch"}},
}


def check_rbac(docs):
    roles = {d["metadata"]["name"]: d for _, d in docs if d["kind"] in ("Role", "ClusterRole")}
    for _, b in docs:
        if b["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        role = roles[b["roleRef"]["name"]]
        for subject in b["subjects"]:
            who = "gateway" if subject["name"].endswith("-gateway") else "operator"
            allowed = ALLOWED_RULES[who]
            for rule in role["rules"]:
                if "*" in rule.get("verbs", []) or "*" in rule.get("resources", []):
                    fail(f"{role['metadata']['name']}: wildcard")
                for g in rule["apiGroups"]:
                    for r in rule["resources"]:
                        extra = set(rule["verbs"]) - allowed.get((g, r), set())
                        if extra:
                            fail(f"{who} may {sorted(extra)} {g}/{r} beyond the documented list")
            if b["kind"] == "ClusterRoleBinding":
                fail(f"the {who} serves one namespace and must not be bound cluster-wide")


def check_network_policies(docs, values):
    policies = [d for _, d in docs if d["kind"] == "NetworkPolicy"]
    if not values.get("networkPolicy", {}).get("enabled", True):
        return
    ingress = [p for p in policies if "Ingress" in p["spec"].get("policyTypes", [])]
    egress = [p for p in policies if "Egress" in p["spec"].get("policyTypes", [])]
    if not ingress or not egress:
        fail("runner pods need both an ingress and an egress NetworkPolicy")
    for p in ingress:
        if p["spec"]["podSelector"].get("matchLabels") != {"cliscale.dev/component": "runner"}:
            fail(f"{p['metadata']['name']}: must select runner pods")
        for rule in p["spec"].get("ingress", []):
            ports = rule.get("ports", [])
            if [x.get("port") for x in ports] != [RUNNER_PORT]:
                fail(f"{p['metadata']['name']}: ingress must be on port {RUNNER_PORT} only")
            for peer in rule.get("from", []):
                labels = peer.get("podSelector", {}).get("matchLabels", {})
                if labels.get("cliscale.dev/component") != "gateway" or "ipBlock" in peer:
                    fail(f"{p['metadata']['name']}: ingress admits non-gateway peers: {peer}")
                if "namespaceSelector" not in peer:
                    fail(f"{p['metadata']['name']}: the gateway peer must name its namespace")
    np = values.get("runner", {}).get("networkPolicy", {})
    cidrs = np.get("egressCidrs", [])
    allowed = [(a["cidr"], set(a["ports"])) for a in np.get("allowEgress", [])]
    # Never reachable unless allowlisted: cloud metadata and the cluster's private ranges.
    must_deny = {"0.0.0.0/0": {"169.254.0.0/16", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"},
                 "::/0": {"fe80::/10", "fc00::/7"}}
    for p in egress:
        for rule in p["spec"].get("egress", []):
            ports = {x.get("port") for x in rule.get("ports", [])}
            if ports == {53} or ports == set():
                if ports == set():
                    fail(f"{p['metadata']['name']}: an egress rule without ports")
                continue
            peers = rule.get("to", [])
            # The API's output store, which runners append to: the operator's pods, in the
            # release's namespace, on the API port only.
            to_api = ports == {API_PORT} and peers and all(
                "ipBlock" not in x
                and "namespaceSelector" in x
                and x.get("podSelector", {}).get("matchLabels", {}).get("cliscale.dev/component")
                == "operator"
                for x in peers
            )
            if to_api:
                continue
            if ports == {API_PORT}:
                fail(f"{p['metadata']['name']}: the API port is open to more than the operator: {peers}")
            if [(x.get("ipBlock", {}).get("cidr"), ports) for x in peers] in ([a] for a in allowed):
                continue
            if cidrs and sorted(x["ipBlock"]["cidr"] for x in peers) != sorted(cidrs):
                fail(f"{p['metadata']['name']}: egress must be limited to the allowlist")
            for x in peers:
                block = x.get("ipBlock")
                if block is None:
                    fail(f"{p['metadata']['name']}: runner egress to pods or namespaces: {x}")
                elif block["cidr"] in must_deny and not must_deny[block["cidr"]] <= set(block.get("except", [])):
                    fail(f"{p['metadata']['name']}: egress to {block['cidr']} must exclude "
                         f"{sorted(must_deny[block['cidr']])}")


def validate_objects(label, docs):
    for version in K8S_VERSIONS:
        for path, doc in docs:
            if doc.get("apiVersion", "").startswith("monitoring.coreos.com"):
                continue  # A CRD of the Prometheus operator, not part of Kubernetes.
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                fail(f"{label} {path} {doc['kind']} on Kubernetes {version}: {e.message}")


def check_dockerfiles():
    files = sorted((ROOT / "docker").glob("Dockerfile.*"))
    if len(files) != 3:
        fail(f"expected the operator, gateway and runner Dockerfiles, found {files}")
    for f in files:
        text = f.read_text()
        froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
        for image in froms:
            name = image.split("@")[0]
            tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else ""
            if not tag or tag == "latest":
                fail(f"{f.name}: base {image} is not pinned to a version")
        final = text[text.rfind("\nFROM "):]
        users = re.findall(r"^USER\s+(\S+)", final, re.M)
        if not users or not re.fullmatch(r"[1-9][0-9]*(:[1-9][0-9]*)?", users[-1]):
            fail(f"{f.name}: the final stage must end as a numeric non-root USER, found {users}")
        if re.search(r"^(ARG|ENV)\s+\S*(SECRET|TOKEN|PASSWORD|API_KEY)", text, re.M | re.I):
            fail(f"{f.name}: a secret-looking ARG or ENV")
        if "--mount=type=secret" in text:
            fail(f"{f.name}: build secrets are not expected")
    ignored = (ROOT / ".dockerignore").read_text().split()
    for needed in ("target", ".git"):
        if needed not in ignored:
            fail(f".dockerignore should exclude {needed}")


def main():
    check_dockerfiles()
    report = helm.lint(str(CHART), strict=True)
    for m in report.get("messages", []):
        if m["severity"] >= 2:
            fail(f"helm lint: {m['path']}: {m['error']}")
    if report.get("errors"):
        fail(f"helm lint: {report['errors']}")

    # The defaults alone (the evaluation database on), and with a database of one's own (off).
    value_sets = {"default": {}, "database-url": {"database": {"url": "postgres://u:p@db:5432/cliscale"}}}
    for f in sorted((CHART / "ci").glob("*-values.yaml")):
        value_sets[f.stem] = yaml.safe_load(f.read_text())

    runner_job = yaml.safe_load(subprocess.run(
        ["cargo", "run", "-q", "--locked", "-p", "cliscale-operator", "--bin", "cliscale-crdgen",
         "--", "runner-job"], cwd=ROOT, check=True, capture_output=True, text=True).stdout)
    crd = yaml.safe_load((CHART / "crds" / "commandsession.yaml").read_text())
    for name in ("commandsession.yaml", "commandtemplate.yaml", "commandschedule.yaml"):
        if (CHART / "crds" / name).read_text() != (ROOT / "crds" / name).read_text():
            fail(f"charts/cliscale/crds/{name} differs from crds/{name}")
    more = [(f"crds/{n}", yaml.safe_load((CHART / "crds" / n).read_text()))
            for n in ("commandtemplate.yaml", "commandschedule.yaml")]
    validate_objects("crds", [("crds/commandsession.yaml", crd), *more, ("runner Job", runner_job)])
    for spec in pod_specs(runner_job):
        check_restricted("runner Job", spec)

    for label, values in value_sets.items():
        try:
            docs = render(values)
        except helm.HelmError as e:
            fail(f"{label}: render failed: {e}")
            continue
        kinds = sorted({d["kind"] for _, d in docs})
        print(f"{label}: {len(docs)} objects ({', '.join(kinds)})")
        validate_objects(label, docs)
        for path, doc in docs:
            for spec in pod_specs(doc):
                check_restricted(f"{label} {path}", spec)
        check_rbac(docs)
        check_network_policies(docs, values)
        evaluation = [d for _, d in docs if d["kind"] == "StatefulSet"]
        wanted = not (values.get("database", {}).get("url") or values.get("database", {}).get("existingSecret"))
        wanted = wanted and values.get("database", {}).get("evaluation", {}).get("enabled", True)
        if bool(evaluation) != bool(wanted):
            fail(f"{label}: the evaluation database is {'on' if evaluation else 'off'}, expected {'on' if wanted else 'off'}")
        if evaluation:
            image = evaluation[0]["spec"]["template"]["spec"]["containers"][0]["image"]
            if not image.startswith("postgres:"):
                fail(f"{label}: the evaluation database must be PostgreSQL's official image, not {image}")
            secrets = {d["metadata"]["name"]: d for _, d in docs if d["kind"] == "Secret"}
            url = base64.b64decode(secrets["cs-cliscale-database"]["data"]["url"]).decode()
            if not re.fullmatch(r"postgres://cliscale:[A-Za-z0-9]{32}@cs-cliscale-postgres\.cliscale\.svc:5432/cliscale\?sslmode=disable", url):
                fail(f"{label}: the evaluation database URL has the wrong shape")
            if any(d["kind"] == "Job" for _, d in docs):
                fail(f"{label}: no migration hook can reach the evaluation database before it starts")
        if label == "production-values":
            if not any(d["kind"] == "HorizontalPodAutoscaler" for _, d in docs):
                fail("production: no HPA")
            ing = [d for _, d in docs if d["kind"] == "Ingress"]
            if not ing or not ing[0]["spec"].get("tls"):
                fail("production: no TLS on the ingress")

    # Generated secrets have the shapes the binaries accept: the API key csk_<16 hex>_<32+>,
    # the signing key an Ed25519 PKCS#8 PEM (as genPrivateKey "ed25519" writes it).
    secrets = {d["metadata"]["name"]: d for _, d in render(value_sets["default"]) if d["kind"] == "Secret"}
    key = base64.b64decode(secrets["cs-cliscale-api-key"]["data"]["key"]).decode()
    if not re.fullmatch(r"csk_[0-9a-f]{16}_[A-Za-z0-9]{32,}", key):
        fail(f"generated API key has the wrong shape: {key[:24]}...")
    pem = base64.b64decode(secrets["cs-cliscale-signing-key"]["data"]["signing.pem"])
    described = subprocess.run(["openssl", "pkey", "-noout", "-text"], input=pem,
                               capture_output=True)
    if described.returncode != 0 or b"ED25519" not in described.stdout.upper():
        fail("generated signing key is not an Ed25519 private key")

    # The values schema refuses bad values (each must fail validation).
    base = value_sets["default"]
    bad = {
        "unknown key": {"replicaCount": 3},
        "string replicas": {"operator": {"replicas": "two"}},
        "zero replicas": {"gateway": {"replicas": 0}},
        "bad database URL": {"database": {"url": "mysql://x"}},
        "bad API key": {"apiKey": {"value": "hunter2"}},
        "bad duration": {"gateway": {"readyWait": "soon"}},
        "bad port": {"runner": {"networkPolicy": {"egressPorts": [70000]}}},
        "bad pull policy": {"image": {"pullPolicy": "Sometimes"}},
        "bad namespace": {"sessionsNamespace": "Not_A_Namespace"},
        "bad public URL": {"publicUrl": "cliscale.example.com/path"},
    }
    for what, override in bad.items():
        values = copy.deepcopy(base)
        for k, v in override.items():
            values[k] = v if not isinstance(v, dict) else {**values.get(k, {}), **v}
        try:
            helm.Chart.load(str(CHART)).validate_schema(values)
            fail(f"values schema accepted {what}: {override}")
        except helm.HelmError:
            print(f"values schema rejects {what}")
    try:
        render({"database": {"evaluation": {"enabled": False}}})
        fail("rendering without a database should fail")
    except helm.HelmError as e:
        if "database.url" not in str(e):
            fail(f"missing database: unclear error {e}")

    if FAILURES:
        print(f"chart checks: {len(FAILURES)} failures")
        sys.exit(1)
    print("chart checks: all passed")


if __name__ == "__main__":
    main()
