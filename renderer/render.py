"""Plans in, Kubernetes YAML out: the `rendered/<project>/` tree and `deploy/`.

Jinja2 templates (`templates/*.yaml.j2`, shipped as package `renderer.templates`)
turn a plan into objects; every value goes through `tojson`, so nothing a user
writes can inject YAML. The output is parsed back, checked (renderer.checks) and
dumped canonically (renderer.output).

The tree is built from independent parts, so one version can be re-rendered alone:

* `project_tree(project)`: Namespace (optional) and NetworkPolicies (project settings
  only), and with kai.yaml `gateway:` the GRPCRoute (which also follows the published
  version and the canary, by name and weight);
* `version_tree(project, version, state)`: one version's folder, a pure function of
  the project settings, the version's files, its state and its canary weight;
* `kustomization(project, paths)`: the `kustomization.yaml` listing every file.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2

from runner import contract

from . import __version__, checks, dashboards, output
from .autoscaling import KEDA, monitoring_endpoint
from .giturl import flux_url
from .images import kustomize_images
from .krt import Version
from .plan import (
    ACTIVE_SERVICE,
    ENTRYPOINT,
    EXTERNAL_SECRET,
    MANAGED_BY,
    METRICS_PATH,
    NODE,
    SEALED_SECRET,
    PlanError,
    Process,
    VersionPlan,
    build_plan,
    configmap_key,
    is_running,
    labels,
)
from .plan import (
    SECRET as SECRET,  # kai dev names the kind of its local config source
)
from .problems import InputError, Problem
from .project import (
    CANARY_ANNOTATION,
    CANARY_WEIGHT_ANNOTATION,
    DEPLOY_DIR,
    KUSTOMIZATION,
    PROJECT_FILE,
    STARTED,
    VERSIONS_DIR,
    ConfigSource,
    EgressRule,
    Monitoring,
    Project,
    canary_conflicts,
    too_many_published,
)
from .templateyaml import parse
from .yamlsafe import load_yaml

SYNC_WAVE = "argocd.argoproj.io/sync-wave"
ARGOCD_NAMESPACE = "argocd"
FLUX_NAMESPACE = "flux-system"
OBJECT_LIMIT = 1024 * 1024  # etcd's limit for one object


class RenderError(InputError):
    """The tree cannot be rendered, or what was rendered is invalid; carries Problems."""


# --- templates ----------------------------------------------------------------------------


def _load_template(name: str) -> str:
    return resources.files("renderer.templates").joinpath(name).read_text(encoding="utf-8")


_ENV = jinja2.Environment(
    loader=jinja2.FunctionLoader(_load_template),
    undefined=jinja2.StrictUndefined,
    autoescape=False,
    keep_trailing_newline=True,
    auto_reload=False,
)


@functools.cache
def _template(name: str) -> jinja2.Template:
    return _ENV.get_template(f"{name}.yaml.j2")


def render_template(template: str, /, **context: Any) -> dict[str, Any]:
    """Render one template and parse it back into an object."""
    obj = parse(_template(template).render(**context))
    if not isinstance(obj, dict):
        raise TypeError(f"template {template} did not produce a mapping")
    return obj


# --- names -------------------------------------------------------------------------------


def file_name(obj: Mapping[str, Any]) -> str:
    """`<kind lowercased>-<name>.yaml`, the file an object is written to."""
    return f"{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"


def nats_ports(url: str) -> list[int]:
    """The TCP ports of a (possibly comma-separated) NATS URL; 4222 when none is given."""
    ports = set()
    for server in contract.nats_servers(url):
        try:
            ports.add(contract.nats_address(server)[1])
        except ValueError:
            ports.add(contract.NATS_PORT)
    return sorted(ports) or [contract.NATS_PORT]


# --- one version -------------------------------------------------------------------------


def _version_problem(plan: VersionPlan, message: str) -> RenderError:
    return RenderError([Problem(f"{VERSIONS_DIR}/{plan.version}", message=message)])


def _configmap(plan: VersionPlan) -> dict[str, Any]:
    data: dict[str, str] = {}
    binary: dict[str, str] = {}
    for path, content in plan.files.items():
        key = configmap_key(path)
        try:
            data[key] = content.decode("utf-8")
        except UnicodeDecodeError:
            binary[key] = base64.b64encode(content).decode("ascii")
    return render_template("configmap", plan=plan, data=data, binary_data=binary)


def _deployment(plan: VersionPlan, process: Process, monitoring: Monitoring) -> dict[str, Any]:
    annotations = {} if monitoring.pod_monitor else scrape_annotations(process)
    return render_template("deployment", plan=plan, p=process, pod_annotations=annotations)


def scrape_annotations(process: Process) -> dict[str, str]:
    """The prometheus.io/* annotations of a process's pods, for a Prometheus that discovers
    pods by annotation (without a PodMonitor): scrape METRICS_PATH on its web port."""
    return {
        "prometheus.io/path": METRICS_PATH,
        "prometheus.io/port": str(process.web_port.port),
        "prometheus.io/scrape": "true",
    }


def _podmonitor(project: Project, plan: VersionPlan) -> dict[str, Any]:
    """The version's PodMonitor: METRICS_PATH on the web port of every one of its pods."""
    return render_template(
        "podmonitor",
        name=plan.version,
        namespace=plan.namespace,
        labels={**project.monitoring.labels,
                **labels(plan.project, plan.version, "monitoring", "podmonitor", plan.version)},
        selector=version_pods(plan.project, plan.version),
        ports=sorted({p.web_port.name for p in plan.processes}),
        path=METRICS_PATH,
    )


def version_pods(project: str, version: str) -> dict[str, str]:
    """The labels that select every pod of a version (entrypoint and nodes)."""
    return {"app.kubernetes.io/part-of": project, "app.kubernetes.io/version": version}


def _egress_policy(name: str, namespace: str, object_labels: Mapping[str, str],
                   pods: Mapping[str, str], rules: tuple[EgressRule, ...]) -> dict[str, Any]:
    """A NetworkPolicy that opens kai.yaml egress `rules` to the `pods` it selects."""
    return render_template("networkpolicy", kind="egress", name=name, namespace=namespace,
                           labels=dict(object_labels), pod_selector=dict(pods), rules=rules)


def _version_egress(plan: VersionPlan, rules: tuple[EgressRule, ...]) -> list[dict[str, Any]]:
    """The version's own egress rules (kai.yaml versions.<v>.network.egress), for its nodes;
    they add to the project's, which its nodes get from the project's policy."""
    if not rules:
        return []
    name = f"{plan.version}-egress"
    return [_egress_policy(name, plan.namespace,
                           labels(plan.project, plan.version, "network", "egress", name),
                           {**version_pods(plan.project, plan.version), "type": NODE}, rules)]


def _disruption_budget(plan: VersionPlan, process: Process) -> dict[str, Any]:
    return render_template("poddisruptionbudget", plan=plan, p=process)


def _autoscaler(project: Project, plan: VersionPlan, process: Process) -> dict[str, Any]:
    """An autoscaled process's KEDA ScaledObject (a node, engine keda) or HPA (the
    entrypoint, or a node with engine hpa); renderer.autoscaling."""
    scaling = process.autoscaling
    assert scaling is not None
    if scaling.engine == KEDA:
        return render_template(
            "scaledobject", plan=plan, p=process, scaling=scaling,
            endpoint=monitoring_endpoint(project.nats.url, project.nats.monitoring),
            account=project.nats.account)
    return render_template("horizontalpodautoscaler", plan=plan, p=process, scaling=scaling)


def _service(plan: VersionPlan) -> dict[str, Any]:
    return render_template("service", plan=plan)


def _ingress(project: Project, plan: VersionPlan, name: str = ACTIVE_SERVICE,
             extra: Mapping[str, str] | None = None) -> dict[str, Any]:
    """An Ingress `name` to the version's Service (active-entrypoint when published), with
    kai.yaml's ingress settings and `extra` annotations."""
    ing = project.ingress
    return render_template(
        "ingress",
        name=name,
        namespace=plan.namespace,
        labels=labels(plan.project, plan.version, "ingress", "ingress", name),
        # wave 1, with the Service: after the Deployments (wave 0) are healthy
        annotations={**dict(ing.annotations), **dict(extra or {}), SYNC_WAVE: "1"},
        class_name=ing.class_name,
        tls_secret=ing.tls_secret,
        host=ing.host,
        service=plan.service_name,
    )


def canary_ingress_name(version: str) -> str:
    return f"{version}-canary"


def _canary_ingress(project: Project, plan: VersionPlan, weight: int) -> dict[str, Any]:
    """The canary's Ingress: the main Ingress's host, class, TLS and annotations, to the
    canary's Service, marked as ingress-nginx's canary taking `weight`% of the requests."""
    return _ingress(project, plan, canary_ingress_name(plan.version),
                    {CANARY_ANNOTATION: "true", CANARY_WEIGHT_ANNOTATION: str(weight)})


def _grpcroute(project: Project) -> dict[str, Any]:
    """The GRPCRoute (kai.yaml `gateway:`) from the Gateways to the published version's
    Service and the canary's, weighted as Project.traffic splits the traffic."""
    assert project.gateway is not None
    published = project.published
    backends = [{"name": ACTIVE_SERVICE if version == published else version,
                 "port": contract.GRPC_PORT, "weight": weight}
                for version, weight in project.traffic]
    return render_template(
        "grpcroute",
        api_version=checks.GRPCROUTE_API_VERSION,
        name=ACTIVE_SERVICE,
        namespace=project.namespace,
        labels={"app.kubernetes.io/component": "route",
                "app.kubernetes.io/instance": ACTIVE_SERVICE,
                "app.kubernetes.io/managed-by": MANAGED_BY,
                "app.kubernetes.io/name": "grpcroute",
                "app.kubernetes.io/part-of": project.name},
        parent_refs=project.gateway.parent_refs,
        hostnames=list(project.gateway.hostnames),
        backends=backends,
    )


def _externalsecret(plan: VersionPlan) -> dict[str, Any]:
    return render_template("externalsecret", plan=plan, es=plan.external_secret)


def _sealedsecret(project: Project, plan: VersionPlan, source: ConfigSource) -> dict[str, Any]:
    where = source.file or "(no file)"
    problem = functools.partial(Problem, where)
    if not source.file:
        raise RenderError([problem(message=f"version {plan.version}: config source "
                                           f"{SEALED_SECRET} needs `file`")])
    # A user's file: the same safe loader as krt.yml and kai.yaml (size cap, no aliases,
    # one mapping document), with positions in its problems.
    try:
        obj: dict[str, Any] = load_yaml(Path(project.root) / source.file, where).data
    except InputError as exc:
        raise RenderError(exc.problems) from None
    raw_meta = obj.get("metadata")
    meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
    errors = []
    if obj.get("kind") != "SealedSecret" or not str(obj.get("apiVersion", "")).startswith(
        "bitnami.com/"
    ):
        errors.append(problem(path="kind", message="must be a bitnami.com SealedSecret"))
    if meta.get("name") != source.secret:
        errors.append(problem(path="metadata.name", message=(
            f"is {meta.get('name')!r}, but kai.yaml says the Secret is {source.secret!r}")))
    if meta.get("namespace") not in (None, plan.namespace):
        errors.append(problem(path="metadata.namespace", message=(
            f"is {meta.get('namespace')!r}, but the project's namespace is {plan.namespace!r}")))
    if errors:
        raise RenderError(errors)
    obj = {k: v for k, v in obj.items() if k != "status"}
    meta = {k: v for k, v in meta.items() if v is not None}
    meta["namespace"] = plan.namespace
    meta["annotations"] = {**(meta.get("annotations") or {}), SYNC_WAVE: "-1"}
    obj["metadata"] = meta
    return obj


def _config_objects(project: Project, plan: VersionPlan) -> list[dict[str, Any]]:
    problem = plan.config_problem
    if problem:
        raise _version_problem(plan, problem)
    source = plan.config_source
    if not plan.config.declared or source is None:
        return []
    if source.kind == SECRET:
        return []  # the user creates the Secret; nothing of it enters git
    if source.kind == EXTERNAL_SECRET:
        return [_externalsecret(plan)]
    return [_sealedsecret(project, plan, source)]


def render_version(project: Project, plan: VersionPlan) -> list[dict[str, Any]]:
    """The Kubernetes objects of one version in its planned state (none when stopped)."""
    if not is_running(plan.state):
        return []
    objects = _config_objects(project, plan)
    if not plan.version_image:  # else the files are in the image
        objects.append(_configmap(plan))
    objects += _version_egress(plan, project.egress_of(plan.version))
    objects += [_deployment(plan, process, project.monitoring) for process in plan.processes]
    objects += [_disruption_budget(plan, process) for process in plan.processes
                if process.spread]
    objects += [_autoscaler(project, plan, process) for process in plan.processes
                if process.autoscaling]
    objects.append(_service(plan))
    vs = project.versions.get(plan.version)
    if project.gateway is None:  # else the project's GRPCRoute routes the traffic
        if plan.published:
            objects.append(_ingress(project, plan))
        elif plan.state == STARTED and vs is not None and vs.canary:
            objects.append(_canary_ingress(project, plan, vs.canary))
    if project.monitoring.pod_monitor:
        objects.append(_podmonitor(project, plan))
    if project.monitoring.dashboards:
        objects.append(_dashboards(plan))
    return objects


def _dashboards(plan: VersionPlan) -> dict[str, Any]:
    """The version's Grafana dashboards (renderer.dashboards), for Grafana's sidecar."""
    return render_template("dashboards", name=dashboards.configmap_name(plan.version),
                           namespace=plan.namespace, labels=dashboards.configmap_labels(plan),
                           data=dashboards.dashboards_data(plan))


def version_tree(project: Project, version: Version, state: str | None = None) -> dict[str, bytes]:
    """One version's files, as paths relative to `rendered/<project>/`, checked.

    A pure function of the project settings, the version and its state: a caller that
    knows only one version changed can re-render just this part.
    """
    try:
        plan = build_plan(project, version, state)
    except dashboards.DashboardError as exc:
        raise RenderError([exc.problem]) from None
    except PlanError as exc:
        raise RenderError([Problem(f"{VERSIONS_DIR}/{version.name}", message=str(exc))]) from None
    objects = render_version(project, plan)
    return _files(project, objects, folder=plan.version, source=f"{VERSIONS_DIR}/{plan.version}")


# --- the project ---------------------------------------------------------------------------


def render_project_objects(project: Project) -> list[dict[str, Any]]:
    """The project-level objects: its Namespace (unless kai.yaml says `createNamespace:
    false`), NetworkPolicies and, with `gateway:` and a published version, the GRPCRoute."""
    base = {"app.kubernetes.io/managed-by": MANAGED_BY, "app.kubernetes.io/part-of": project.name}
    common = {"namespace": project.namespace, "labels": base}
    network = project.network
    objects = []
    if project.create_namespace:
        objects.append(render_template("namespace", namespace=project.namespace,
                                       project=project.name, managed_by=MANAGED_BY))
    objects += [
        render_template(
            "networkpolicy", kind="default", name=f"{project.name}-default-deny",
            pod_selector={"app.kubernetes.io/part-of": project.name},
            nats_ports=nats_ports(project.nats.url), nats_namespace=project.nats.namespace,
            tracing_port=project.tracing.port, tracing_namespace=project.tracing.namespace,
            ports=[], **common,
        ),
        render_template(
            "networkpolicy", kind="entrypoint", name=f"{project.name}-entrypoint-ingress",
            pod_selector={"app.kubernetes.io/part-of": project.name, "type": ENTRYPOINT},
            nats_ports=[], nats_namespace="",
            ports=[contract.GRPC_PORT, contract.WEB_PORT],
            from_namespace=network.ingress_from, **common,
        ),
    ]
    if network.egress:  # every node of the project; a version's own rules add to these
        objects.append(_egress_policy(
            f"{project.name}-egress", project.namespace, base,
            {"app.kubernetes.io/part-of": project.name, "type": NODE}, network.egress))
    if network.metrics_namespace:
        objects.append(render_template(
            "networkpolicy", kind="metrics", name=f"{project.name}-metrics-ingress",
            pod_selector={"app.kubernetes.io/part-of": project.name},
            ports=[contract.WEB_PORT, contract.NODE_WEB_PORT],
            from_namespace=network.metrics_namespace, **common,
        ))
    if project.gateway is not None and project.traffic:
        objects.append(_grpcroute(project))
    return objects


def project_tree(project: Project) -> dict[str, bytes]:
    """The project-level files (paths relative to `rendered/<project>/`), checked."""
    return _files(project, render_project_objects(project), folder="", source="kai.yaml")


def kustomization(project: Project, paths: list[str] | set[str]) -> bytes:
    """`kustomization.yaml`: every file (sorted), the namespace and the image map
    (its entries without `gpu`)."""
    images = []
    for img in kustomize_images(project.images):
        entry = {"name": img.name, "newName": img.new_name}
        if img.new_tag:
            entry["newTag"] = img.new_tag
        if img.digest:
            entry["digest"] = img.digest
        images.append(entry)
    doc: dict[str, Any] = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": project.namespace,
        "resources": sorted(p for p in paths if p != KUSTOMIZATION),
    }
    if images:
        doc["images"] = images
    return output.dump(doc, source=PROJECT_FILE)


def render_project(project: Project, versions: Mapping[str, Version]) -> dict[str, bytes]:
    """The whole `rendered/<project>/` tree: relative posix path -> file bytes.

    `versions` maps version names to loaded versions; every started or published one
    in kai.yaml must be there. Raises RenderError when the tree cannot be rendered or
    is not valid, so an invalid tree is never written.
    """
    check_published(project)
    tree = project_tree(project)
    tree.update(versions_tree(project, versions, project.versions))
    return finish_tree(project, tree)


def check_published(project: Project) -> None:
    """At most one version is published, and the canary rules hold (renderer.project holds
    the rules)."""
    states = {n: vs.state for n, vs in sorted(project.versions.items())}
    message = too_many_published(states)
    if message:
        raise RenderError([Problem("kai.yaml", path="versions", message=message)])
    conflicts = canary_conflicts(states, {n: vs.canary for n, vs in
                                          sorted(project.versions.items())})
    if conflicts:
        raise RenderError([Problem("kai.yaml", path=f"versions.{name}.canary",
                                   message=f"{name} {message}") for name, message in conflicts])


def versions_tree(project: Project, versions: Mapping[str, Version],
                  names: Iterable[str]) -> dict[str, bytes]:
    """The folders of the named versions in their kai.yaml state (stopped ones: nothing),
    checked; every problem of every version is raised at once."""
    problems: list[Problem] = []
    tree: dict[str, bytes] = {}
    for name in sorted(names):
        state = project.versions[name].state
        if not is_running(state):
            continue
        version = versions.get(name)
        if version is None:
            problems.append(Problem("kai.yaml", path=f"versions.{name}", message=(
                f"is {state}, but there is no version {name} in {VERSIONS_DIR}/")))
            continue
        try:
            tree.update(version_tree(project, version, state))
        except RenderError as exc:
            problems += exc.problems
    if problems:
        raise RenderError(problems)
    return tree


def finish_tree(project: Project, tree: dict[str, bytes],
                kept: Iterable[str] = ()) -> dict[str, bytes]:
    """Check the tree as a whole and add `kustomization.yaml`; returns the tree, sorted.

    `kept` names files already on disk that stay in the tree unchanged (an incremental
    render): they count for unique names and the kustomization, and are not re-checked.
    """
    kept = set(kept)
    _check_unique(project, [*tree, *kept])
    prefix = f"{project.rendered_rel}/"
    kubeconform = checks.kubeconform(tree, project.kubernetes_version)
    if kubeconform:
        raise RenderError([Problem(prefix + p.file, path=p.path, message=p.message)
                           for p in kubeconform])
    tree[KUSTOMIZATION] = kustomization(project, set(tree) | kept)
    return dict(sorted(tree.items()))


def _check_unique(project: Project, paths: Iterable[str]) -> None:
    """Two versions may not render the same object (e.g. one ExternalSecret name)."""
    seen: dict[str, str] = {}
    problems = []
    for rel in sorted(paths):
        name = rel.rsplit("/", 1)[-1]
        if name in seen:
            problems.append(Problem(f"{project.rendered_rel}/{rel}", message=(
                f"the same object is rendered by {seen[name]} too; object names must be "
                "unique in the project")))
        else:
            seen[name] = rel
    if problems:
        raise RenderError(problems)


# --- deploy/ --------------------------------------------------------------------------------


DEPLOY_HEADER = (
    b"# Written once by `kai init`; yours to edit (kai never rewrites deploy/).\n"
    b"# Apply deploy/argocd/ or deploy/flux/ once; they sync rendered/<project>.\n"
)


def render_deploy(project: Project, repo_url: str, branch: str,
                  repo_path: str = "", secret_ref: str = "") -> dict[str, bytes]:
    """`deploy/`: an Argo CD Application, and a Flux GitRepository + Kustomization.

    Both point at `rendered/<project>` of `repo_url` on `branch`; `repo_path` is where
    the kai repo sits inside that git repository ("" at its top). Apply one of
    `deploy/argocd/` or `deploy/flux/`, not both. Flux gets an scp-like URL as
    `ssh://` (renderer.giturl); `secret_ref` names the Secret in Flux's namespace
    that holds its git credentials (`spec.secretRef`), "" for a public repository.
    """
    common = {
        "name": project.name,
        "namespace": project.namespace,
        "repo_url": repo_url,
        "branch": branch,
        "labels": {"app.kubernetes.io/managed-by": MANAGED_BY,
                   "app.kubernetes.io/part-of": project.name},
    }
    path = "/".join(p for p in (repo_path.strip("/"), project.rendered_rel) if p)
    objects = {
        "argocd": render_template("argocd-application", argocd_namespace=ARGOCD_NAMESPACE,
                                  path=path, **common),
        "flux/git": render_template("flux-gitrepository", flux_namespace=FLUX_NAMESPACE,
                                    secret_ref=secret_ref,
                                    **{**common, "repo_url": flux_url(repo_url)}),
        "flux/kustomization": render_template("flux-kustomization",
                                              flux_namespace=FLUX_NAMESPACE,
                                              path=f"./{path}", **common),
    }
    tree: dict[str, bytes] = {}
    checked: dict[str, dict[str, Any]] = {}
    for key, obj in objects.items():
        rel = f"{key.split('/')[0]}/{file_name(obj)}"
        checked[f"{DEPLOY_DIR}/{rel}"] = obj
        tree[rel] = DEPLOY_HEADER + output.dump(obj)
    problems = checks.check_objects(checked, project.kubernetes_version)
    if problems:
        raise RenderError(problems)
    return dict(sorted(tree.items()))


def render_ci_workflow(project: Project, branch: str, repo_path: str = "") -> bytes:
    """The GitHub Actions workflow of the pull-request check.

    On a pull request into `branch` and on a push to it: install kai, then
    `kai validate .` and `kai render --check` in the GitOps repo, which is `repo_path`
    inside the git repository ("" at its top); then (job `images`) `kai build VERSION
    --push` for each image `kai build --list` names that the registry lacks.
    """
    text = _template("github-workflow").render(
        project=project.name, branch=branch, version=__version__,
        working_directory=repo_path.strip("/"),
    )
    if not isinstance(parse(text), dict):
        raise TypeError("template github-workflow did not produce a mapping")
    return text.encode("utf-8")


# --- files ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rendered:
    rel: str
    obj: dict[str, Any]
    data: bytes


def _files(project: Project, objects: list[dict[str, Any]], folder: str,
           source: str) -> dict[str, bytes]:
    """Check objects, then dump each to `<folder>/<kind>-<name>.yaml`."""
    prefix = f"{project.rendered_rel}/"
    rendered = []
    for obj in objects:
        rel = f"{folder}/{file_name(obj)}" if folder else file_name(obj)
        rendered.append(_Rendered(rel, obj, output.dump(obj, source=source)))
    problems = checks.check_objects({prefix + r.rel: r.obj for r in rendered},
                                    project.kubernetes_version)
    for r in rendered:
        if len(r.data) > OBJECT_LIMIT:
            problems.append(Problem(prefix + r.rel, message=(
                f"is {len(r.data)} bytes, more than Kubernetes stores in one object "
                f"({OBJECT_LIMIT}); build an image with the code baked in")))
    if problems:
        raise RenderError(problems)
    tree: dict[str, bytes] = {}
    for r in rendered:
        if r.rel in tree:
            raise RenderError([Problem(prefix + r.rel, message="two objects have this file name")])
        tree[r.rel] = r.data
    return tree
