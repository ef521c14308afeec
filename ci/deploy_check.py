#!/usr/bin/env python3
"""Offline checks of the deployment files, used by ci/validate-deploy.sh.

Subcommands:
  check-compose FILE         check what `docker-compose config` cannot: mounts, rule files, dashboards
  compose-bridge-flags FILE  print the --flags of the bridge's command in a compose file
  run-healthcheck DOCKERFILE PORT  run the image's HEALTHCHECK command against an admin port here
  kustomize DIR              print the objects of a kustomize base as one YAML stream (resources and
                             configMapGenerator files; enough to validate the base without kustomize)
  validate-k8s VERSION FILE  validate every object of a YAML stream against Kubernetes VERSION's schemas
                             (strict: unknown fields fail); CRDs are checked here by hand
  check-wiring FILE [SECRET...]  check what schemas cannot: selectors, ports, probes, references, grace
                             period, a spool volume large enough for spool_max_bytes; the Secrets named
                             SECRET are expected outside the stream (a Helm chart's existingSecret)
  same-objects BASE OTHER    fail unless the YAML stream OTHER (a Helm chart's rendering) holds the objects
                             of BASE (the kustomize base's): the same kinds and names, and the same content
                             but for added labels and annotations, a Secret's encoding and the config's
                             TOML layout
  container-flags FILE       print the --flags of the bridge's container args in a YAML stream
  container-env FILE         print the bridge's environment in a YAML stream as NAME=VALUE lines, for
                             running its commands here: a Secret's value stands in for itself, and the
                             paths inside the container (RCKB_CONFIG, RCKB_SPOOL_DIR) are left out
  prometheusrule-spec FILE   print the `spec` of the PrometheusRule in a YAML stream (for promtool)
  same-rules RULES FILE      fail unless that PrometheusRule's spec equals the rules file RULES
  sync-prometheusrule RULES OUT   rewrite the PrometheusRule OUT to embed RULES
  toml-config FILE NAME KEY  print data[KEY] of ConfigMap NAME (name prefix) in a YAML stream
  metric-names PROM_EXPORT SRC   print the rckb_* names the bridge serves: those in the /metrics text
                             PROM_EXPORT plus those registered in the Rust source SRC (labelled
                             families appear in /metrics only once used)
  check-dashboard FILE       check a Grafana dashboard's structure (ids, grid, queries, data source)
  dashboard-rules FILE       print a rules file recording every dashboard query, for `promtool check rules`
  dashboard-metrics NAMES FILE...  fail if a dashboard (JSON) or rules file (YAML) uses an rckb_* name
                             not in NAMES
"""

import json
import re
import sys
import tomllib
from pathlib import Path

import yaml


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def load_stream(path):
    with open(path) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


# ---- kustomize --------------------------------------------------------------------------------------

SUPPORTED_KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "configMapGenerator"}


def kustomize(directory):
    base = Path(directory)
    kustomization = yaml.safe_load((base / "kustomization.yaml").read_text())
    unsupported = set(kustomization) - SUPPORTED_KUSTOMIZATION_KEYS
    if unsupported:
        # Refuse rather than silently validate something kustomize would render differently.
        fail(f"kustomization.yaml uses {sorted(unsupported)}, which this offline renderer does not apply")
    objects = []
    for resource in kustomization.get("resources", []):
        path = base / resource
        if not path.is_file():
            fail(f"resource {resource} is not a file in {directory}")
        objects.extend(load_stream(path))
    for generator in kustomization.get("configMapGenerator", []):
        data = {}
        for entry in generator.get("files", []):
            key, _, source = entry.rpartition("=")
            source_path = base / source
            data[key or source_path.name] = source_path.read_text()
        for literal in generator.get("literals", []):
            key, _, value = literal.partition("=")
            data[key] = value
        # kustomize appends a content hash to the name (and to references to it); for validation the
        # bare name is enough.
        objects.append({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": generator["name"]}, "data": data})
    yaml.safe_dump_all(objects, sys.stdout, sort_keys=False)


# ---- docker compose ---------------------------------------------------------------------------------

def check_compose(path):
    """What `docker-compose config` cannot see without an engine: mounted files exist, Prometheus finds
    its rule files where it looks, Grafana finds the dashboards, the bridge waits for a healthy Kafka."""
    root = Path(path).parent
    services = yaml.safe_load(Path(path).read_text())["services"]
    problems = []
    mounts = {}  # service -> {container path: host path}
    for name, service in services.items():
        mounts[name] = {}
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                if not (root / source).exists():
                    problems.append(f"{name}: mounted {source} does not exist")
                mounts[name][target] = root / source
    build = services["bridge"].get("build")
    context = build if isinstance(build, str) else (build or {}).get("context", ".")
    if not (root / context / "Dockerfile").is_file():
        problems.append("bridge: no Dockerfile in its build context")
    if (services["bridge"].get("depends_on", {}).get("kafka") or {}).get("condition") != "service_healthy":
        problems.append("bridge: must depend on kafka being healthy")
    if not services["kafka"].get("healthcheck"):
        problems.append("kafka: no healthcheck, so service_healthy never holds")

    # Prometheus resolves rule_files relative to its configuration file, inside the container.
    flags = dict(f.split("=", 1) for f in services["prometheus"].get("command", []) if "=" in f)
    config_target = flags.get("--config.file", "/etc/prometheus/prometheus.yml")
    config_source = mounts["prometheus"].get(config_target)
    if not config_source:
        problems.append(f"prometheus: {config_target} is not mounted from the repository")
    else:
        config = yaml.safe_load(config_source.read_text())
        for rule_file in config.get("rule_files", []):
            target = str(Path(config_target).parent / rule_file)
            if mounts["prometheus"].get(target) != config_source.parent / rule_file:
                problems.append(f"prometheus: rule file {rule_file} is not mounted at {target}")
        targets = [t for job in config.get("scrape_configs", [])
                   for sc in job.get("static_configs", []) for t in sc.get("targets", [])]
        if "bridge:9180" not in targets:
            problems.append("prometheus: does not scrape bridge:9180")

    # Grafana loads dashboards from the provider's path, which must be the mounted dashboards directory.
    provisioning = mounts["grafana"].get("/etc/grafana/provisioning")
    if not provisioning:
        problems.append("grafana: /etc/grafana/provisioning is not mounted from the repository")
    else:
        for provider_file in sorted((provisioning / "dashboards").glob("*.y*ml")):
            for provider in yaml.safe_load(provider_file.read_text()).get("providers", []):
                directory = mounts["grafana"].get(provider["options"]["path"])
                if not directory or not list(directory.glob("*.json")):
                    problems.append(f"grafana: provider path {provider['options']['path']} holds no "
                                    f"mounted dashboard")
        datasources = [d for f in sorted((provisioning / "datasources").glob("*.y*ml"))
                       for d in yaml.safe_load(f.read_text()).get("datasources", [])]
        if not any(d.get("type") == "prometheus" and "prometheus:9090" in d.get("url", "") for d in datasources):
            problems.append("grafana: no provisioned data source for the prometheus service")
    for problem in problems:
        print(f"  FAIL {problem}")
    if problems:
        fail(f"{len(problems)} problem(s) in {path}")
    print("  ok   mounted files exist, rule files and dashboards resolve in the containers, "
          "bridge waits for a healthy Kafka")


def compose_bridge_flags(path):
    """The --flags of the bridge's command in the compose file, one a line."""
    command = yaml.safe_load(Path(path).read_text())["services"]["bridge"].get("command", [])
    print("\n".join(arg.split("=", 1)[0] for arg in command if arg.startswith("--")))


# ---- Dockerfile -------------------------------------------------------------------------------------

def run_healthcheck(dockerfile, port):
    """Runs the image's HEALTHCHECK command here, against an admin listener on PORT instead of 9180."""
    import subprocess

    text = re.sub(r"\\\n", " ", Path(dockerfile).read_text())
    match = re.search(r"^HEALTHCHECK .*?CMD (\[.*\])\s*$", text, re.M)
    if not match:
        fail(f"no exec-form HEALTHCHECK ... CMD [...] in {dockerfile}")
    command = [arg.replace("/9180", f"/{port}") for arg in json.loads(match.group(1))]
    sys.exit(subprocess.run(command, timeout=10).returncode)


# ---- Kubernetes validation --------------------------------------------------------------------------

def check_service_monitor(obj, objects):
    """The Prometheus Operator CRD has no bundled schema: check what matters to scraping."""
    spec = obj.get("spec") or {}
    endpoints = spec.get("endpoints") or []
    if not endpoints:
        return ["spec.endpoints is empty"]
    selector = spec.get("selector") or {}
    match_labels = selector.get("matchLabels") or {}
    expressions = selector.get("matchExpressions") or []

    def selected(service):
        labels = service["metadata"].get("labels") or {}
        if any(labels.get(k) != v for k, v in match_labels.items()):
            return False
        for expression in expressions:
            key, operator = expression["key"], expression["operator"]
            values = expression.get("values") or []
            if operator == "Exists" and key not in labels:
                return False
            if operator == "DoesNotExist" and key in labels:
                return False
            if operator == "In" and labels.get(key) not in values:
                return False
            if operator == "NotIn" and labels.get(key) in values:
                return False
        return True

    services = [o for o in objects if o["kind"] == "Service" and selected(o)]
    if len(services) != 1:
        names = [s["metadata"]["name"] for s in services]
        return [f"selector must match exactly one Service, matches {names}"]
    port_names = {p.get("name") for p in services[0]["spec"].get("ports", [])}
    return [f"endpoint port {e.get('port')!r} is not a port of Service {services[0]['metadata']['name']}"
            for e in endpoints if e.get("port") not in port_names]


def check_prometheus_rule(obj, _objects):
    groups = (obj.get("spec") or {}).get("groups")
    return [] if groups else ["spec.groups is empty"]


CUSTOM_RESOURCES = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): check_service_monitor,
    ("monitoring.coreos.com/v1", "PrometheusRule"): check_prometheus_rule,
}


def validate_k8s(version, path):
    import kubernetes_validate

    objects = load_stream(path)
    if not objects:
        fail(f"{path} holds no object")
    failures = 0
    for obj in objects:
        what = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        custom = CUSTOM_RESOURCES.get((obj.get("apiVersion"), obj.get("kind")))
        if custom:
            problems = custom(obj, objects)
            note = "custom resource, checked by hand; its rules by promtool"
        else:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
                problems = []
            except kubernetes_validate.ValidationError as e:
                problems = [f"{'.'.join(str(p) for p in e.path)}: {e.message}"]
            except kubernetes_validate.SchemaNotFoundError as e:
                # An unknown kind is a failure here, not a warning: it would otherwise pass unchecked.
                problems = [e.message]
            note = f"schema of Kubernetes {version}, strict"
        for problem in problems:
            print(f"  FAIL {what}: {problem}")
        if not problems:
            print(f"  ok   {what} ({note})")
        failures += bool(problems)
    if failures:
        fail(f"{failures} object(s) invalid against Kubernetes {version}")


# ---- wiring between the objects ---------------------------------------------------------------------

def seconds(duration):
    match = re.fullmatch(r"(\d+)(ms|s|m)", duration)
    if not match:
        fail(f"cannot read the duration {duration!r}")
    value, unit = int(match.group(1)), match.group(2)
    return {"ms": value / 1000, "s": value, "m": value * 60}[unit]


def check_wiring(path, *external_secrets):
    """What schemas cannot see: names, ports and labels that must agree across objects."""
    objects = load_stream(path)
    by_kind = {}
    for obj in objects:
        by_kind.setdefault(obj["kind"], []).append(obj)
    problems = []

    def one(kind):
        found = by_kind.get(kind, [])
        if len(found) != 1:
            fail(f"expected one {kind}, found {len(found)}")
        return found[0]

    sts = one("StatefulSet")
    pod = sts["spec"]["template"]
    pod_labels = pod["metadata"]["labels"]
    container = pod["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    env = {e["name"]: e for e in container.get("env", [])}

    def selects_pods(selector, what):
        if not selector or any(pod_labels.get(k) != v for k, v in selector.items()):
            problems.append(f"{what} selector {selector} does not select the bridge's pods")

    selects_pods(sts["spec"]["selector"]["matchLabels"], "StatefulSet")
    services = {s["metadata"]["name"]: s for s in by_kind.get("Service", [])}
    for name, service in services.items():
        selects_pods(service["spec"].get("selector"), f"Service {name}")
        for port in service["spec"]["ports"]:
            if port["targetPort"] not in ports and port["targetPort"] not in ports.values():
                problems.append(f"Service {name} targets port {port['targetPort']!r} the container lacks")
    governing = services.get(sts["spec"].get("serviceName"))
    if not governing or governing["spec"].get("clusterIP") != "None":
        problems.append("the StatefulSet's serviceName is not a headless Service of the base")
    for pdb in by_kind.get("PodDisruptionBudget", []):
        selects_pods(pdb["spec"]["selector"]["matchLabels"], "PodDisruptionBudget")

    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = (container.get(probe) or {}).get("httpGet")
        if not get:
            problems.append(f"the container has no HTTP {probe}")
        elif get["port"] != "admin":
            problems.append(f"{probe} must use the admin port, not {get['port']!r}")
    if container.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/healthz":
        problems.append("livenessProbe must GET /healthz")
    if container.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
        problems.append("readinessProbe must GET /readyz")
    if ports.get("webhook") != 8080 or ports.get("admin") != 9180:
        problems.append(f"container ports must be webhook 8080 and admin 9180, are {ports}")

    # Secrets and the configuration file must resolve.
    secrets = {s["metadata"]["name"]: s for s in by_kind.get("Secret", [])}
    for variable in env.values():
        ref = (variable.get("valueFrom") or {}).get("secretKeyRef")
        if ref and ref["name"] not in external_secrets:
            secret = secrets.get(ref["name"])
            keys = set((secret or {}).get("stringData", {})) | set((secret or {}).get("data", {}))
            if ref["key"] not in keys:
                problems.append(f"{variable['name']} reads {ref['name']}/{ref['key']}, which the base lacks")
    config_maps = {c["metadata"]["name"]: c for c in by_kind.get("ConfigMap", [])}
    volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
    config_path = env.get("RCKB_CONFIG", {}).get("value")
    mounts = [m for m in container.get("volumeMounts", [])
              if config_path and config_path.startswith(m["mountPath"].rstrip("/") + "/")]
    if not mounts:
        problems.append(f"RCKB_CONFIG={config_path} is not under a volume mount")
    else:
        volume = volumes.get(mounts[0]["name"], {})
        config_map = config_maps.get((volume.get("configMap") or {}).get("name"))
        file_name = config_path.rsplit("/", 1)[1]
        if not config_map or file_name not in config_map.get("data", {}):
            problems.append(f"RCKB_CONFIG={config_path}: no ConfigMap of the base provides {file_name}")
    spool = env.get("RCKB_SPOOL_DIR", {}).get("value")
    claims = {c["metadata"]["name"] for c in sts["spec"].get("volumeClaimTemplates", [])}
    if not any(m["mountPath"] == spool and m["name"] in claims for m in container.get("volumeMounts", [])):
        problems.append(f"RCKB_SPOOL_DIR={spool} is not a volumeClaimTemplates volume")

    spool_sizing = check_spool_volume(sts, env, config_maps, problems)

    # The pod must outlive the bridge's drain, or Kubernetes kills it mid-publish.
    grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
    drain = seconds(env.get("RCKB_SHUTDOWN_GRACE", {}).get("value", "10s"))
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    pause = int(pre_stop[1]) if pre_stop[:1] == ["sleep"] else 0
    if grace < pause + drain + 10:
        problems.append(f"terminationGracePeriodSeconds {grace} leaves under 10 s beyond the preStop "
                        f"pause ({pause} s) and RCKB_SHUTDOWN_GRACE ({drain:g} s)")

    for problem in problems:
        print(f"  FAIL {problem}")
    if problems:
        fail(f"{len(problems)} wiring problem(s) in {path}")
    print(f"  ok   selectors, ports, probes, Secret and ConfigMap references, spool volume, "
          f"grace period {grace} s > preStop {pause} s + drain {drain:g} s, {spool_sizing}")


# The spool's database file outgrows the bytes it accounts for (--spool-max-bytes): src/spool/files.rs
# names the factor, measured by tests/api/spool.rs.
SPOOL_SOURCE = Path(__file__).resolve().parent.parent / "src" / "spool" / "files.rs"
# What a new ext4 or xfs volume leaves for files (journal, metadata, reserved blocks).
FILESYSTEM_SHARE = 0.9
DEFAULT_SPOOL_MAX_BYTES = 1 << 30
QUANTITY_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
                  "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity_bytes(quantity):
    match = re.fullmatch(r"(\d+)([kMGT]i?|)", str(quantity))
    if not match:
        fail(f"cannot read the storage quantity {quantity!r}")
    return int(match.group(1)) * QUANTITY_UNITS[match.group(2)]


def check_spool_volume(sts, env, config_maps, problems):
    """A full spool's database file must fit the spool volume."""
    factor = re.search(r"pub const FILE_SIZE_FACTOR: f64 = ([0-9.]+);", SPOOL_SOURCE.read_text())
    if not factor:
        fail(f"cannot find FILE_SIZE_FACTOR in {SPOOL_SOURCE}")
    factor = float(factor.group(1))
    max_bytes = env.get("RCKB_SPOOL_MAX_BYTES", {}).get("value")
    if max_bytes is None:
        for config_map in config_maps.values():
            for text in config_map.get("data", {}).values():
                try:
                    max_bytes = tomllib.loads(text).get("spool_max_bytes", max_bytes)
                except tomllib.TOMLDecodeError:
                    continue
    max_bytes = int(max_bytes) if max_bytes is not None else DEFAULT_SPOOL_MAX_BYTES
    volume = None
    spool = env.get("RCKB_SPOOL_DIR", {}).get("value")
    mounted = {m["name"] for m in sts["spec"]["template"]["spec"]["containers"][0].get("volumeMounts", [])
               if m["mountPath"] == spool}
    for claim in sts["spec"].get("volumeClaimTemplates", []):
        if claim["metadata"]["name"] in mounted:
            volume = quantity_bytes(claim["spec"]["resources"]["requests"]["storage"])
    if volume is None:
        return "no spool volume to size"
    needed = max_bytes * factor
    if needed > volume * FILESYSTEM_SHARE:
        problems.append(f"spool_max_bytes {max_bytes} lets the spool file grow to {needed:.0f} bytes "
                        f"({factor} x), over {FILESYSTEM_SHARE:.0%} of the spool volume ({volume} bytes)")
    return f"spool file up to {needed / 2**30:.2f} GiB on a {volume / 2**30:g} GiB volume"


# ---- the Helm chart against the kustomize base --------------------------------------------------------

# Keys whose value is a set of labels: the chart adds its own (app.kubernetes.io/instance, helm.sh/chart,
# ...) to every set, so the base's must be a subset of the chart's.
LABEL_KEYS = {"labels", "matchLabels"}


def label_map(value):
    return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())


def compare(base, other, where, problems):
    """Appends to problems every difference between base and other, but for added labels and annotations."""
    if isinstance(base, dict) and isinstance(other, dict):
        for key in sorted(set(base) | set(other)):
            path = f"{where}.{key}"
            if key == "annotations":
                continue  # the chart adds checksums of the configuration; the base has none of its own
            if key not in other:
                problems.append(f"{path}: missing (base: {base[key]!r})")
            elif key not in base:
                if key not in LABEL_KEYS:
                    problems.append(f"{path}: not in the base ({other[key]!r})")
            elif (key in LABEL_KEYS or key == "selector") and label_map(base[key]) and label_map(other[key]):
                # Services' selectors are label sets too.
                missing = {k: v for k, v in base[key].items() if other[key].get(k) != v}
                if missing:
                    problems.append(f"{path}: lacks the base's {missing}")
            else:
                compare(base[key], other[key], path, problems)
    elif isinstance(base, list) and isinstance(other, list):
        if len(base) != len(other):
            problems.append(f"{where}: {len(other)} items, the base {len(base)}")
        for i, (b, o) in enumerate(zip(base, other)):
            compare(b, o, f"{where}[{i}]", problems)
    elif base != other:
        problems.append(f"{where}: {other!r}, the base {base!r}")


def normalised(obj, renames):
    """An object with what may differ without changing what Kubernetes runs set aside: generated names
    (kustomize's hashed ConfigMap names, in references too), a Secret's data as plain strings, the
    configuration as parsed TOML rather than text."""
    import base64

    def rename(node):
        if isinstance(node, dict):
            return {k: rename(v) for k, v in node.items()}
        if isinstance(node, list):
            return [rename(v) for v in node]
        return renames.get(node, node) if isinstance(node, str) else node

    obj = rename(obj)
    if obj.get("kind") == "Secret":
        data = {k: base64.b64decode(v).decode() for k, v in (obj.pop("data", None) or {}).items()}
        data.update(obj.pop("stringData", None) or {})
        obj["stringData"] = data
    if obj.get("kind") == "ConfigMap":
        obj["data"] = {k: tomllib.loads(v) if k.endswith(".toml") else v
                       for k, v in (obj.get("data") or {}).items()}
    return obj


def same_objects(base_path, other_path):
    base, other = load_stream(base_path), load_stream(other_path)
    # kubectl kustomize appends a hash of the content to a generated ConfigMap's name.
    renames = {o["metadata"]["name"]: re.sub(r"-[a-z0-9]{10}$", "", o["metadata"]["name"])
               for o in base if o["kind"] == "ConfigMap"}
    base = {(o["kind"], renames.get(o["metadata"]["name"], o["metadata"]["name"])): normalised(o, renames)
            for o in base}
    other = {(o["kind"], o["metadata"]["name"]): normalised(o, {}) for o in other}
    failures = 0
    for key in sorted(set(base) | set(other)):
        what = "/".join(key)
        if key not in other:
            print(f"  FAIL {what}: in the base, not rendered")
            failures += 1
            continue
        if key not in base:
            print(f"  FAIL {what}: rendered, not in the base")
            failures += 1
            continue
        problems = []
        compare(base[key], other[key], what, problems)
        for problem in problems:
            print(f"  FAIL {problem}")
        if not problems:
            print(f"  ok   {what}")
        failures += bool(problems)
    if failures:
        fail(f"{failures} object(s) of {other_path} differ from {base_path}")


def container_flags(path):
    """The --flags among the args of every StatefulSet's containers, one a line."""
    for obj in load_stream(path):
        if obj.get("kind") == "StatefulSet":
            for container in obj["spec"]["template"]["spec"]["containers"]:
                for arg in container.get("args", []):
                    if arg.startswith("--"):
                        print(arg.split("=", 1)[0])


CONTAINER_PATHS = {"RCKB_CONFIG", "RCKB_SPOOL_DIR"}


def container_env(path):
    for obj in load_stream(path):
        if obj.get("kind") == "StatefulSet":
            for variable in obj["spec"]["template"]["spec"]["containers"][0].get("env", []):
                if variable["name"] in CONTAINER_PATHS:
                    continue
                ref = (variable.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    print(f"{variable['name']}=a-value-from-secret-{ref['name']}-{ref['key']}")
                elif "value" in variable:
                    print(f"{variable['name']}={variable['value']}")


# ---- PrometheusRule ---------------------------------------------------------------------------------

def prometheus_rule(path):
    rules = [o for o in load_stream(path) if o.get("kind") == "PrometheusRule"]
    if len(rules) != 1:
        fail(f"expected one PrometheusRule in {path}, found {len(rules)}")
    return rules[0]


def prometheusrule_spec(path):
    yaml.safe_dump(prometheus_rule(path)["spec"], sys.stdout, sort_keys=False, width=1000)


def same_rules(rules_path, path):
    expected = yaml.safe_load(Path(rules_path).read_text())
    if prometheus_rule(path)["spec"] != expected:
        fail(f"the PrometheusRule in {path} differs from {rules_path}; regenerate it with "
             f"`python3 ci/deploy_check.py sync-prometheusrule {rules_path} <prometheusrule.yaml>`")


PROMETHEUS_RULE_HEADER = """\
# The alert rules of deploy/prometheus/alerts.yml for the Prometheus Operator. Do not edit by hand:
# edit alerts.yml, then regenerate this file with
#   python3 ci/deploy_check.py sync-prometheusrule \\
#     {rules} {out}
# (ci/validate-deploy.sh fails when the two differ). Your Prometheus may select rules by a label
# (e.g. `release: <helm release>` for kube-prometheus-stack): add it in an overlay.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: rc-kafka-bridge
  labels:
    app.kubernetes.io/name: rc-kafka-bridge
spec:
"""


def sync_prometheusrule(rules_path, out):
    lines = Path(rules_path).read_text().splitlines()
    # Keep the rules' own text (block scalars, comments) rather than re-serialising them.
    start = next(i for i, line in enumerate(lines) if line.startswith("groups:"))
    body = "\n".join(("  " + line) if line else "" for line in lines[start:])
    Path(out).write_text(PROMETHEUS_RULE_HEADER.format(rules=rules_path, out=out) + body + "\n")
    same_rules(rules_path, out)


# ---- configuration ----------------------------------------------------------------------------------

def toml_config(path, name, key):
    for obj in load_stream(path):
        if obj.get("kind") == "ConfigMap" and obj["metadata"]["name"].startswith(name):
            sys.stdout.write(obj["data"][key])
            return
    fail(f"no ConfigMap {name} in {path}")


# ---- metric names -----------------------------------------------------------------------------------

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def metric_names(export_path, source_path):
    text = Path(export_path).read_text()
    served = set(re.findall(r"^# (?:HELP|TYPE) (rckb_\w+)", text, re.M))
    served |= set(re.findall(r"^(rckb_\w+)", text, re.M))
    histograms = set(re.findall(r"^# TYPE (rckb_\w+) histogram", text, re.M))

    source = Path(source_path).read_text()
    namespace = re.search(r'const NAMESPACE: &str = "(\w+)";', source)
    if not namespace:
        fail(f"cannot find the metric namespace in {source_path}")
    registered = {f"{namespace.group(1)}_{n}"
                  for n in re.findall(r'(?:opts|HistogramOpts::new)\(\s*"(\w+)"', source)}
    histograms |= {f"{namespace.group(1)}_{n}"
                   for n in re.findall(r'HistogramOpts::new\(\s*"(\w+)"', source)}
    if len(registered) < 5:
        fail(f"found only {len(registered)} metric names in {source_path}: has its layout changed?")
    names = served | registered
    names |= {h + suffix for h in histograms for suffix in HISTOGRAM_SUFFIXES}
    print("\n".join(sorted(names)))


def expressions(path):
    """Every PromQL expression of a Grafana dashboard (targets, template queries) or a rules file."""
    if path.endswith(".json"):
        dashboard = json.loads(Path(path).read_text())
        found = []

        def walk(node):
            if isinstance(node, dict):
                if node.get("type") == "datasource":
                    return  # a data source variable: its query is a plugin type, not PromQL
                for key, value in node.items():
                    if key in ("expr", "query", "definition") and isinstance(value, str):
                        found.append(value)
                    elif key == "query" and isinstance(value, dict) and isinstance(value.get("query"), str):
                        found.append(value["query"])
                    else:
                        walk(value)
            elif isinstance(node, list):
                for item in node:
                    walk(item)

        walk(dashboard)
        return found
    return [rule["expr"] for group in yaml.safe_load(Path(path).read_text())["groups"]
            for rule in group["rules"]]


def grafana_variables(expr):
    """Grafana's variables replaced by values Prometheus accepts, so promtool can parse the query."""
    for variable, value in (("$__rate_interval", "1m"), ("$__interval", "1m"), ("$__range", "1h")):
        expr = expr.replace(variable, value)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def dashboard_rules(path):
    """A rules file recording every query of a dashboard: `promtool check rules` then parses them."""
    exprs = [e for e in expressions(path) if not e.startswith("label_values(")]
    rules = [{"record": f"dashboard:query_{i}", "expr": grafana_variables(e)} for i, e in enumerate(exprs)]
    yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, sys.stdout, sort_keys=False, width=1000)


def check_dashboard(path):
    """Structure Grafana needs to show every panel: unique ids and refIds, a 24-column grid, queries."""
    dashboard = json.loads(Path(path).read_text())
    problems = []
    if not dashboard.get("uid") or not dashboard.get("title"):
        problems.append("the dashboard needs a uid and a title")
    ids = [p.get("id") for p in dashboard["panels"]]
    if len(set(ids)) != len(ids):
        problems.append("panel ids are not unique")
    occupied = {}
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        if grid["x"] + grid["w"] > 24:
            problems.append(f"panel {panel['title']!r} is wider than the grid")
        for row in range(grid["y"], grid["y"] + grid["h"]):
            for column in range(grid["x"], grid["x"] + grid["w"]):
                if (row, column) in occupied:
                    problems.append(f"panel {panel['title']!r} overlaps {occupied[(row, column)]!r}")
                    break
                occupied[(row, column)] = panel["title"]
            else:
                continue
            break
        if panel["type"] == "row":
            continue
        targets = panel.get("targets") or []
        refs = [t.get("refId") for t in targets]
        if not targets or len(set(refs)) != len(refs) or not all(t.get("expr") for t in targets):
            problems.append(f"panel {panel['title']!r} needs queries with an expr and unique refIds")
        if (panel.get("datasource") or {}).get("uid") != "${datasource}":
            problems.append(f"panel {panel['title']!r} must use the $datasource variable")
    for problem in problems:
        print(f"  FAIL {problem}")
    if problems:
        fail(f"{len(problems)} problem(s) in {path}")
    print(f"  ok   {len(dashboard['panels'])} panels, ids, grid, queries and data source")


def dashboard_metrics(names_path, paths):
    known = set(Path(names_path).read_text().split())
    failures = 0
    for path in paths:
        used = {name for expr in expressions(path) for name in re.findall(r"\brckb_\w+", expr)}
        if not used:
            print(f"  FAIL {path}: uses no rckb_* metric at all")
            failures += 1
            continue
        unknown = sorted(used - known)
        for name in unknown:
            print(f"  FAIL {path}: {name} is not served by the bridge")
        if not unknown:
            print(f"  ok   {path}: {len(used)} metric names, all served")
        failures += len(unknown)
    if failures:
        fail(f"{failures} unknown metric name(s)")


COMMANDS = {
    "check-compose": (check_compose, 1),
    "compose-bridge-flags": (compose_bridge_flags, 1),
    "run-healthcheck": (run_healthcheck, 2),
    "kustomize": (kustomize, 1),
    "validate-k8s": (validate_k8s, 2),
    "same-objects": (same_objects, 2),
    "container-flags": (container_flags, 1),
    "container-env": (container_env, 1),
    "prometheusrule-spec": (prometheusrule_spec, 1),
    "same-rules": (same_rules, 2),
    "sync-prometheusrule": (sync_prometheusrule, 2),
    "toml-config": (toml_config, 3),
    "metric-names": (metric_names, 2),
    "check-dashboard": (check_dashboard, 1),
    "dashboard-rules": (dashboard_rules, 1),
}


def main(argv):
    if len(argv) >= 2 and argv[0] == "dashboard-metrics":
        return dashboard_metrics(argv[1], argv[2:])
    if len(argv) >= 2 and argv[0] == "check-wiring":
        return check_wiring(*argv[1:])
    if not argv or argv[0] not in COMMANDS or len(argv) - 1 != COMMANDS[argv[0]][1]:
        sys.exit(__doc__)
    function, _ = COMMANDS[argv[0]]
    function(*argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
