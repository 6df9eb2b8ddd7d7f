#!/usr/bin/env bash
# A one-node Kubernetes 1.20 cluster on 127.0.0.1 for the kubernetes test tier, built offline from
# Debian bookworm's `kubernetes` source package (recipe: docs/KUBERNETES.md).
#
#   tests/k8s/cluster.sh up      build what is missing, start etcd, kube-apiserver, controller-manager,
#                                scheduler and kubelet (dockershim on the local Docker engine), wait until
#                                a pod from a local image runs; the LAST stdout line is the kubeconfig path
#   tests/k8s/cluster.sh down    stop all of it, remove the kubelet's containers and every state dir
#   tests/k8s/cluster.sh build   only build (or check) the cached binaries and the pause image
#   tests/k8s/cluster.sh status  which components run
#   tests/k8s/cluster.sh kubectl the path of a kubectl of the cluster's version (Debian's kubernetes-client,
#                                downloaded and unpacked into the cache when missing); LAST stdout line
#   tests/k8s/cluster.sh restart-apiserver [S]   stop kube-apiserver, wait S seconds, start it again (fault tests)
#
# Built binaries are cached on the machine, never in the repository:
#   $MCP_CODEEXEC_K8S_CACHE (default /var/cache/mcp-codeexec-k8s)/<debian version>/bin
# Runtime state (PKI, etcd data, kubelet root, logs) lives in $MCP_CODEEXEC_K8S_STATE
# (default /var/lib/mcp-codeexec-k8s); `down` removes all but the logs, which the next fresh `up` replaces.
# Needs root (the kubelet manages cgroups and mounts). Every listener is on 127.0.0.1.
set -euo pipefail

CACHE=${MCP_CODEEXEC_K8S_CACHE:-/var/cache/mcp-codeexec-k8s}
STATE=${MCP_CODEEXEC_K8S_STATE:-/var/lib/mcp-codeexec-k8s}
RUN=$STATE/run
LOGS=$STATE/logs
PKI=$RUN/pki
PAUSE_IMAGE=localhost/mcp-codeexec-k8s-pause:3.4
HOSTS_MARK="# mcp-codeexec-k8s"
NODE=local
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kubelet)
DEB_PACKAGES=(golang-go etcd-server etcd-client containernetworking-plugins rsync jq openssl curl dpkg-dev gcc
    golang-github-modern-go-reflect2-dev)
# Host paths the kubelet / controller-manager write whatever the flags say; removed by `down` unless they
# existed before `up` (recorded in $RUN/preexisting).
HOST_PATHS=(/var/log/pods /var/log/containers /var/lib/kubelet /usr/libexec/kubernetes)

log() { echo "cluster.sh: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------------------------------------- packages

ensure_packages() {
    local missing=() p
    for p in "${DEB_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing Debian packages: ${missing[*]}"
    # /usr/sbin/policy-rc.d keeps the packaged etcd service from starting here; elsewhere stop it so it
    # does not hold 2379/2380.
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2
    if command -v systemctl >/dev/null && systemctl is-active --quiet etcd 2>/dev/null; then
        systemctl disable --now etcd >&2
    fi
}

# A private apt configuration with deb-src lines for the Debian mirror the system already uses, so
# `apt-get source` works without editing /etc/apt.
APT_DIR=$CACHE/apt
APT_OPTS=()
apt_opts() {
    APT_OPTS=(-o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts="$APT_DIR/sources.list.d"
        -o Dir::State::Lists="$APT_DIR/lists" -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache=)
}
apt_src() {
    apt-get -o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts="$APT_DIR/sources.list.d" \
        -o Dir::State::Lists="$APT_DIR/lists" -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache= "$@"
}

setup_apt_src() {
    mkdir -p "$APT_DIR/sources.list.d" "$APT_DIR/lists/partial"
    local src=$APT_DIR/sources.list.d/debian-src.sources
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        sed -e 's/^Types:.*/Types: deb-src/' /etc/apt/sources.list.d/debian.sources > "$src"
    elif grep -qs '^deb http' /etc/apt/sources.list; then
        grep '^deb http' /etc/apt/sources.list | grep debian | sed 's/^deb /deb-src /' > "${src%.sources}.list"
        rm -f "$src"
    else
        die "no Debian mirror found in /etc/apt/sources.list(.d)"
    fi
    apt_src update -qq >&2
}

# The source package version the cache is keyed by (the mirror's newest bookworm 1.20.x).
deb_version() {
    if [ -f "$CACHE/current-version" ]; then cat "$CACHE/current-version"; return; fi
    setup_apt_src
    local v
    apt_opts
    v=$(apt-cache "${APT_OPTS[@]}" showsrc kubernetes 2>/dev/null | awk '/^Version:/{print $2}' | sort -V | tail -1)
    [ -n "$v" ] || die "apt-get showsrc kubernetes found nothing"
    case "$v" in *1.20.*) ;; *) die "kubernetes source $v is not 1.20.x; the patches are for 1.20";; esac
    echo "$v" > "$CACHE/current-version"
    echo "$v"
}

# ---------------------------------------------------------------------------------------------- build

BINS=(kube-apiserver kube-controller-manager kube-scheduler kubelet)

bins_ok() {
    local bin=$1
    [ -f "$bin/SHA256SUMS" ] || return 1
    (cd "$bin" && sha256sum --quiet -c SHA256SUMS >/dev/null 2>&1)
}

fetch_source() {
    local vdir=$1 version=$2
    ls "$vdir"/src-pkg/kubernetes_*.dsc >/dev/null 2>&1 && return 0
    [ -d "$APT_DIR/lists" ] && ls "$APT_DIR"/lists/*Sources* >/dev/null 2>&1 || setup_apt_src
    mkdir -p "$vdir/src-pkg"
    log "apt-get source kubernetes=$version"
    (cd "$vdir/src-pkg" && apt_src source --download-only -qq "kubernetes=$version" >&2)
}

# Replace one exact line in a file; fail if it is not there (the recipe's patches are line edits).
patch_line() {
    local file=$1 old=$2 new=$3
    grep -qxF -- "$old" "$file" || die "patch: line not found in $file: $old"
    OLD=$old NEW=$new perl -0pi -e 's/^\Q$ENV{OLD}\E$/$ENV{NEW}/m' "$file"
    grep -qxF -- "$new" "$file" || die "patch: could not apply to $file"
}

apply_patches() {
    local src=$1
    # 1, 2: this VM refuses negative oom_score_adj (even for root), so the sandbox and Guaranteed
    # containers would fail to start.
    patch_line "$src/pkg/kubelet/dockershim/docker_sandbox.go" \
        $'\tdefaultSandboxOOMAdj int = -998' $'\tdefaultSandboxOOMAdj int = 0'
    patch_line "$src/pkg/kubelet/qos/policy.go" \
        $'\tguaranteedOOMScoreAdj int = -997' $'\tguaranteedOOMScoreAdj int = 0'
    # 3: warn instead of rewriting host sysctls (vm.overcommit_memory, kernel.panic, kernel.panic_on_oops).
    patch_line "$src/pkg/kubelet/cm/container_manager_linux.go" \
        $'\tb := KernelTunableModify' $'\tb := KernelTunableWarn'
    # 4: loopback-only pods have no IP; unpatched, the kubelet kills their sandbox ~3 s after Running.
    patch_line "$src/pkg/kubelet/kuberuntime/kuberuntime_manager.go" \
        $'\tif !kubecontainer.IsHostNetworkPod(pod) && sandboxStatus.Network.Ip == "" {' \
        $'\tif false && !kubecontainer.IsHostNetworkPod(pod) && sandboxStatus.Network.Ip == "" { // local patch: loopback-only pods have no IP'
    # 5: vendored reflect2 1.0.1 built with Go >= 1.18 panics the apiserver on pretty-printed JSON;
    # use Debian's reflect2 1.0.2 (golang-github-modern-go-reflect2-dev).
    local deb=/usr/share/gocode/src/github.com/modern-go/reflect2 ven=$src/vendor/github.com/modern-go/reflect2
    [ -f "$deb/go_above_118.go" ] || die "$deb has no reflect2 1.0.2"
    rm -f "$ven"/*.go "$ven"/*.s
    cp "$deb"/*.go "$deb"/*.s "$ven"/
    rm -f "$ven"/*_test.go
}

build_bins() {
    local vdir=$1 version=$2
    local build=$vdir/build
    fetch_source "$vdir" "$version"
    rm -rf "$build"; mkdir -p "$build"
    log "extracting and patching the source (build dir $build)"
    dpkg-source -q -x "$vdir"/src-pkg/kubernetes_*.dsc "$build/src" >&2
    apply_patches "$build/src"
    mkdir -p "$build/src/.go/src/k8s.io" && ln -s ../../.. "$build/src/.go/src/k8s.io/kubernetes"
    log "building ${BINS[*]} (niced; several minutes on 2 cores)"
    local t0=$SECONDS
    (
        cd "$build/src/.go/src/k8s.io/kubernetes"
        export GOPATH=$build/src/.go CGO_ENABLED=0 GOPROXY=off GOFLAGS= GO111MODULE=off \
            GOMAXPROCS=${MCP_CODEEXEC_K8S_GOMAXPROCS:-2} PATH=/usr/lib/go/bin:$PATH HOME=$build/home
        nice -n 19 ionice -c3 make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler cmd/kubelet"
    ) > "$vdir/build.log" 2>&1 || { tail -30 "$vdir/build.log" >&2; die "build failed; log: $vdir/build.log"; }
    mkdir -p "$vdir/bin"
    local b
    for b in "${BINS[@]}"; do install -m 0755 "$build/src/_output/bin/$b" "$vdir/bin/$b"; done
    (cd "$vdir/bin" && sha256sum "${BINS[@]}" > SHA256SUMS)
    echo "$((SECONDS - t0))" > "$vdir/build-seconds"
    log "built in $((SECONDS - t0)) s"
    rm -rf "$build"
}

build_pause() {
    local vdir=$1
    docker image inspect "$PAUSE_IMAGE" >/dev/null 2>&1 && return 0
    local tmp; tmp=$(mktemp -d)
    local tarball; tarball=$(ls "$vdir"/src-pkg/kubernetes_*.orig.tar.* | head -1)
    tar -xaf "$tarball" -O --wildcards '*/build/pause/linux/pause.c' > "$tmp/pause.c"
    mkdir "$tmp/rootfs"
    gcc -Os -Wall -Werror -static -DVERSION=v3.4-debian -o "$tmp/rootfs/pause" "$tmp/pause.c"
    strip "$tmp/rootfs/pause"
    tar -C "$tmp/rootfs" -c pause | docker import --change 'ENTRYPOINT ["/pause"]' --change 'USER 65535:65535' \
        - "$PAUSE_IMAGE" >/dev/null
    rm -rf "$tmp"
    log "pause image $PAUSE_IMAGE imported"
}

# Sets BIN to the cached binaries, building what is missing.
ensure_built() {
    ensure_packages
    mkdir -p "$CACHE"
    local version; version=$(deb_version)
    local vdir=$CACHE/$version
    BIN=$vdir/bin
    if ! bins_ok "$BIN"; then
        build_bins "$vdir" "$version"
        bins_ok "$BIN" || die "built binaries fail their checksums"
    fi
    # pause.c comes from the orig tarball; keep the (small) source package beside the binaries
    fetch_source "$vdir" "$version"
    build_pause "$vdir"
}

# kubectl 1.20 for `kubectl apply -k deploy/kubernetes/...` (its built-in kustomize): Debian's
# kubernetes-client of the same version, unpacked into the cache rather than installed (a machine may
# already have another kubectl owning /usr/bin/kubectl, e.g. a cloud SDK's).
ensure_kubectl() {
    local version; version=$(deb_version)
    KUBECTL=$CACHE/$version/kubectl/usr/bin/kubectl
    [ -x "$KUBECTL" ] && "$KUBECTL" version --client >/dev/null 2>&1 && return 0
    local tmp; tmp=$(mktemp -d)
    log "apt-get download kubernetes-client=$version"
    (cd "$tmp" && apt-get download -qq -o APT::Sandbox::User=root "kubernetes-client=$version" >&2) || { rm -rf "$tmp"; die "apt-get download kubernetes-client failed (apt-get update?)"; }
    rm -rf "$CACHE/$version/kubectl"
    dpkg-deb -x "$tmp"/kubernetes-client_*.deb "$CACHE/$version/kubectl"
    rm -rf "$tmp"
    "$KUBECTL" version --client >/dev/null || die "the unpacked kubectl does not run"
}

# ---------------------------------------------------------------------------------------------- PKI

leaf() {  # name subject ext-lines...
    local name=$1 subj=$2; shift 2
    printf '%s\n' "$@" > "$PKI/$name.ext"
    openssl req -newkey rsa:2048 -nodes -keyout "$PKI/$name.key" -out "$PKI/$name.csr" -subj "$subj" 2>/dev/null
    openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial -days 30 \
        -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
    rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}

kubeconfig() {  # file token
    cat > "$1" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster: {server: "https://127.0.0.1:6443", certificate-authority: "$PKI/ca.crt"}
users:
- name: user
  user: {token: "$2"}
contexts:
- name: local
  context: {cluster: local, user: user, namespace: default}
current-context: local
KCFG
    chmod 600 "$1"
}

ensure_pki() {
    [ -f "$RUN/admin.kubeconfig" ] && [ -f "$PKI/tokens.csv" ] && return 0
    log "making the CA, certificates, tokens and kubeconfigs"
    rm -rf "$PKI"; mkdir -p "$PKI"; chmod 700 "$PKI"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout "$PKI/ca.key" -out "$PKI/ca.crt" -days 30 \
        -subj "/CN=mcp-codeexec-k8s-ca" 2>/dev/null
    leaf apiserver "/CN=kube-apiserver" "extendedKeyUsage=serverAuth" \
        "subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
    leaf apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "extendedKeyUsage=clientAuth"
    leaf kubelet "/CN=$NODE" "extendedKeyUsage=serverAuth" "subjectAltName=DNS:$NODE,DNS:localhost,IP:127.0.0.1"
    openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
    openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
    local t_admin t_node t_kcm t_sched
    t_admin=$(openssl rand -hex 16); t_node=$(openssl rand -hex 16)
    t_kcm=$(openssl rand -hex 16); t_sched=$(openssl rand -hex 16)
    cat > "$PKI/tokens.csv" <<TOK
$t_admin,admin,uid-admin,"system:masters"
$t_node,system:node:$NODE,uid-node-$NODE,"system:nodes"
$t_kcm,system:kube-controller-manager,uid-kcm
$t_sched,system:kube-scheduler,uid-ksched
TOK
    chmod 600 "$PKI"/*
    kubeconfig "$RUN/kubelet.kubeconfig" "$t_node"
    kubeconfig "$RUN/controller-manager.kubeconfig" "$t_kcm"
    kubeconfig "$RUN/scheduler.kubeconfig" "$t_sched"
    kubeconfig "$RUN/admin.kubeconfig.tmp" "$t_admin"
    mv "$RUN/admin.kubeconfig.tmp" "$RUN/admin.kubeconfig"
}

write_kubelet_config() {
    mkdir -p "$RUN/cni/net.d" "$RUN/cni/cache" "$RUN/volume-plugins" "$RUN/kubelet" "$RUN/dockershim"
    echo '{"cniVersion": "0.4.0", "name": "loopback-only", "plugins": [{"type": "loopback"}]}' \
        > "$RUN/cni/net.d/10-loopback-only.conflist"
    local driver; driver=$(docker info --format '{{.CgroupDriver}}')
    cat > "$RUN/kubelet-config.yaml" <<CFG
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: $PKI/kubelet.crt
tlsPrivateKeyFile: $PKI/kubelet.key
authentication: {anonymous: {enabled: false}, webhook: {enabled: true}, x509: {clientCAFile: $PKI/ca.crt}}
authorization: {mode: Webhook}
cgroupDriver: $driver
failSwapOn: false
oomScoreAdj: 0
makeIPTablesUtilChains: false
hairpinMode: none
volumePluginDir: $RUN/volume-plugins
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi"}
# A pod spec cannot bound its processes: the node does. 512, the Docker backend's pids_limit
# (tests/adversarial fork-bomb a pod and refuse to without it).
podPidsLimit: 512
CFG
}

# ---------------------------------------------------------------------------------------------- processes

pid_of() { cat "$RUN/pids/$1" 2>/dev/null || true; }

alive() {  # a live, non-zombie process (a SIGKILLed child lingers as a zombie here for 1-2 s)
    local pid; pid=$(pid_of "$1")
    [ -n "$pid" ] || return 1
    local stat; stat=$(ps -o stat= -p "$pid" 2>/dev/null || true)
    [ -n "$stat" ] && [ "${stat#Z}" = "$stat" ]
}

spawn() {  # name argv...
    local name=$1; shift
    alive "$name" && return 0
    mkdir -p "$RUN/pids" "$LOGS"
    log "starting $name"
    # Closing 3-9: `flock LOCK cluster.sh up` hands its lock to this script as fd 3; a daemon keeping
    # it would hold the shared cluster lock for as long as the cluster runs.
    setsid env AWS_EC2_METADATA_DISABLED=true "$@" >> "$LOGS/$name.log" 2>&1 < /dev/null 3>&- 4>&- 5>&- 6>&- 7>&- 8>&- 9>&- &
    echo $! > "$RUN/pids/$name"
}

wait_for() {  # what seconds command...
    local what=$1 secs=$2; shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || die "$what not ready after ${secs}s (logs: $LOGS)"
        sleep 0.3
    done
}

api() {  # method path [curl args...]
    local method=$1 path=$2; shift 2
    local token; token=$(awk -F, '$2=="admin"{print $1}' "$PKI/tokens.csv")
    curl -sS --fail --max-time 10 --cacert "$PKI/ca.crt" -H "Authorization: Bearer $token" \
        -X "$method" "https://127.0.0.1:6443$path" "$@"
}

healthz() { curl -sSk --fail --max-time 3 "$1" | grep -qx ok; }

# Ports the cluster listens on; a listener we did not start means another cluster (or tenant) is in the way.
PORTS=(2379 2380 6443 10248 10250 10257 10259)
check_ports() {
    local port
    for port in "${PORTS[@]}"; do
        if ss -Htln "sport = :$port" | grep -q .; then
            local owner; owner=$(ss -Htlnp "sport = :$port" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2)
            local ours=0 c
            for c in "${COMPONENTS[@]}"; do [ "$(pid_of "$c")" = "$owner" ] && ours=1; done
            [ $ours = 1 ] || die "port $port is taken by pid ${owner:-?}, not by this cluster"
        fi
    done
}

start_apiserver() {
    spawn kube-apiserver "$BIN/kube-apiserver" --etcd-servers=http://127.0.0.1:2379 \
        --bind-address=127.0.0.1 --secure-port=6443 --insecure-port=0 \
        --advertise-address=127.0.0.1 --endpoint-reconciler-type=none --service-cluster-ip-range=10.0.0.0/24 \
        --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
        --client-ca-file="$PKI/ca.crt" --token-auth-file="$PKI/tokens.csv" --authorization-mode=Node,RBAC \
        --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
        --service-account-issuer=https://kubernetes.default.svc.cluster.local \
        --api-audiences=https://kubernetes.default.svc.cluster.local \
        --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
        --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
        --kubelet-certificate-authority="$PKI/ca.crt" --kubelet-preferred-address-types=Hostname --v=1
    wait_for kube-apiserver 90 api GET /readyz
}

start_all() {
    [ -d "$RUN" ] || rm -rf "$LOGS"  # a fresh cluster: the logs are its own (down keeps the last ones)
    mkdir -p "$RUN" "$LOGS"
    record_preexisting
    check_ports
    grep -q " $NODE $HOSTS_MARK\$" /etc/hosts || echo "127.0.0.1 $NODE $HOSTS_MARK" >> /etc/hosts
    ensure_pki
    write_kubelet_config

    spawn etcd etcd --name default --data-dir "$RUN/etcd" \
        --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
        --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
        --initial-cluster default=http://127.0.0.1:2380 --initial-cluster-state new --logger zap --log-outputs stderr
    wait_for etcd 30 etcdctl --endpoints http://127.0.0.1:2379 endpoint health

    start_apiserver

    spawn kube-controller-manager "$BIN/kube-controller-manager" --kubeconfig="$RUN/controller-manager.kubeconfig" \
        --bind-address=127.0.0.1 --secure-port=10257 --port=0 --leader-elect=false \
        --use-service-account-credentials=true --service-account-private-key-file="$PKI/sa.key" \
        --root-ca-file="$PKI/ca.crt" --flex-volume-plugin-dir="$RUN/volume-plugins" --v=1
    spawn kube-scheduler "$BIN/kube-scheduler" --kubeconfig="$RUN/scheduler.kubeconfig" \
        --bind-address=127.0.0.1 --secure-port=10259 --port=0 --leader-elect=false --v=1
    wait_for kube-controller-manager 60 healthz https://127.0.0.1:10257/healthz
    wait_for kube-scheduler 60 healthz https://127.0.0.1:10259/healthz

    spawn kubelet "$BIN/kubelet" --config="$RUN/kubelet-config.yaml" --kubeconfig="$RUN/kubelet.kubeconfig" \
        --hostname-override="$NODE" --root-dir="$RUN/kubelet" --experimental-dockershim-root-directory="$RUN/dockershim" \
        --container-runtime=docker --docker-endpoint=unix:///var/run/docker.sock \
        --container-runtime-endpoint="unix://$RUN/dockershim.sock" \
        --pod-infra-container-image="$PAUSE_IMAGE" \
        --network-plugin=cni --cni-conf-dir="$RUN/cni/net.d" --cni-bin-dir=/usr/lib/cni --cni-cache-dir="$RUN/cni/cache" \
        --resolv-conf= --v=2
    wait_for kubelet 60 curl -sf --max-time 3 http://127.0.0.1:10248/healthz
    wait_for "node $NODE Ready" 120 node_ready
    # The ServiceAccount admission rejects pods until default/default exists.
    wait_for "serviceaccount default" 60 api GET /api/v1/namespaces/default/serviceaccounts/default
}

node_ready() {
    api GET "/api/v1/nodes/$NODE" | jq -e '.status.conditions[] | select(.type=="Ready") | .status=="True"' \
        | grep -qx true
}

pod_gone() { ! api GET "/api/v1/namespaces/default/pods/$1" >/dev/null 2>&1; }
pod_running() { api GET "/api/v1/namespaces/default/pods/$1" | jq -e '.status.phase=="Running"' | grep -qx true; }

# A pod from a local image (the pause image, never pulled) must reach Running; then it is removed.
smoke_pod() {
    local name=cluster-smoke
    api DELETE "/api/v1/namespaces/default/pods/$name?gracePeriodSeconds=0" >/dev/null 2>&1 || true
    wait_for "old smoke pod gone" 60 pod_gone "$name"
    api POST /api/v1/namespaces/default/pods -H 'Content-Type: application/json' -d @- >/dev/null <<POD
{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "$name", "labels": {"app.kubernetes.io/managed-by": "cluster.sh"}},
 "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 0, "automountServiceAccountToken": false,
          "enableServiceLinks": false,
          "containers": [{"name": "pause", "image": "$PAUSE_IMAGE", "imagePullPolicy": "Never",
                          "securityContext": {"runAsUser": 65535, "runAsNonRoot": true, "allowPrivilegeEscalation": false,
                                              "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}}}]}}
POD
    local t0=$SECONDS
    wait_for "smoke pod Running" 120 pod_running "$name"
    log "smoke pod Running after $((SECONDS - t0)) s"
    api DELETE "/api/v1/namespaces/default/pods/$name?gracePeriodSeconds=0" >/dev/null
}

# ---------------------------------------------------------------------------------------------- down

record_preexisting() {
    [ -f "$RUN/preexisting" ] && return 0
    local p
    for p in "${HOST_PATHS[@]}" /var/lib/kubelet/device-plugins; do [ -e "$p" ] && echo "$p"; done > "$RUN/preexisting" || true
}

stop_one() {
    local name=$1 pid; pid=$(pid_of "$name")
    [ -n "$pid" ] || return 0
    if alive "$name"; then
        kill -TERM "$pid" 2>/dev/null || true
        local deadline=$((SECONDS + 10))
        while alive "$name" && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
        alive "$name" && kill -KILL "$pid" 2>/dev/null || true
        while alive "$name"; do sleep 0.2; done
    fi
    rm -f "$RUN/pids/$name"
}

# Containers dockershim made: named k8s_<container>_<pod>_<ns>_<uid>_<n> AND labelled by it.
kubelet_containers() {
    docker ps -aq --filter 'name=^/k8s_' --filter 'label=io.kubernetes.docker.type' 2>/dev/null || true
}

stop_all() {
    if [ -f "$RUN/pids/kube-apiserver" ] && alive kube-apiserver && [ -f "$PKI/tokens.csv" ]; then
        local ns
        for ns in $(api GET /api/v1/namespaces 2>/dev/null | jq -r '.items[].metadata.name' || true); do
            api DELETE "/api/v1/namespaces/$ns/pods?gracePeriodSeconds=0" >/dev/null 2>&1 || true
        done
        local deadline=$((SECONDS + 30))
        while [ $SECONDS -lt $deadline ] && [ "$(api GET /api/v1/pods 2>/dev/null | jq '.items | length' || echo 0)" != 0 ]; do
            sleep 0.5
        done
        sleep 2  # let the kubelet tear down the sandboxes (CNI DEL)
    fi
    local i
    for ((i=${#COMPONENTS[@]}-1; i>=0; i--)); do stop_one "${COMPONENTS[$i]}"; done
    local ids; ids=$(kubelet_containers)
    [ -z "$ids" ] || docker rm -f $ids >/dev/null
    local d
    for d in /sys/fs/cgroup/*/kubepods; do
        [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    done
    # Host paths: only after an `up` of ours recorded what existed before it.
    if [ -f "$RUN/preexisting" ]; then
        local pre; pre=$(cat "$RUN/preexisting")
        grep -qx /var/lib/kubelet/device-plugins <<<"$pre" || rm -rf /var/lib/kubelet/device-plugins
        grep -qx /var/lib/kubelet <<<"$pre" || rmdir /var/lib/kubelet 2>/dev/null || true
        for d in /var/log/pods /var/log/containers /usr/libexec/kubernetes; do
            grep -qx "$d" <<<"$pre" || rm -rf "$d"
        done
    fi
    sed -i "/ $NODE $HOSTS_MARK\$/d" /etc/hosts
    # The kubelet bind-mounts its root dir onto itself: unmount everything under run/ before rm.
    if [ -d "$RUN" ]; then
        awk -v r="$RUN" '$5==r || index($5, r "/")==1 {print $5}' /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l
        rm -rf "$RUN"
    fi
}

status() {
    local c
    for c in "${COMPONENTS[@]}"; do
        if alive "$c"; then echo "$c running (pid $(pid_of "$c"))"; else echo "$c stopped"; fi
    done
    echo "kubelet containers on the engine: $(kubelet_containers | wc -l)"
}

# ---------------------------------------------------------------------------------------------- main
case "${1:-}" in
    build) ensure_built; echo "$BIN" ;;
    kubectl) mkdir -p "$CACHE"; ensure_kubectl; echo "$KUBECTL" ;;
    up)
        [ "$(id -u)" = 0 ] || die "must run as root (the kubelet manages cgroups and mounts)"
        t_up=$SECONDS
        ensure_built
        start_all
        smoke_pod
        log "cluster up in $((SECONDS - t_up)) s; logs in $LOGS"
        echo "$RUN/admin.kubeconfig"
        ;;
    down) stop_all; log "cluster down" ;;
    status) status ;;
    restart-apiserver)  # fault tests: the API server goes away (every watch and stream with it) and comes back
        ensure_built  # sets BIN (nothing to build when the cache is there)
        stop_one kube-apiserver
        sleep "${2:-0}"
        start_apiserver
        log "kube-apiserver restarted"
        ;;
    *) echo "usage: $0 up|down|build|status|kubectl|restart-apiserver [seconds down]" >&2; exit 2 ;;
esac
