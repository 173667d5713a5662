#!/usr/bin/env python3
"""kube-emulator: an in-memory Kubernetes API server for testing operators (kube-rs, kubectl) without a cluster.

Requires Python >= 3.11 and **kmock==0.8** (pinned: this file uses kmock internals that may change) + pyyaml:
    python3 -m venv venv && venv/bin/pip install kmock==0.8 pyyaml
    venv/bin/python kube-emulator.py --port 0 --crds deploy/crds/ --kubeconfig kemu.kubeconfig --ready-file kemu.ready
    KUBECONFIG=kemu.kubeconfig kubectl get crds

kmock supplies the aiohttp server, request parsing, the Status error format and the fallback routes (/api,
/version, 404s). The object store, watches, patches, finalizers and group discovery are implemented here, because
kmock's KubernetesEmulator lacks resourceVersion/uid/generation, PUT, NotFound/AlreadyExists reasons, no-op
suppression and watch resumption, all of which a kube-rs Controller relies on.
Known deviations from a real apiserver are listed in README.md next to this file.

-----------------------------------------------------------------------------------------------------------------
Causeway's copy. This is an adapted copy of the shared tool kube-emulator.py (the text above is its original
header, kept as it was). CI runs on a clone of this repository alone, so the tool lives here. Changes to the
original, all of them:
  1. File name: kube_emulator.py (was kube-emulator.py). In this repository run it as
         .tools/bin/python tests/kube/kube_emulator.py --port 0 --crds crds/ --kubeconfig kc --ready-file ready -v
     `scripts/setup.sh --test` installs kmock==0.8 and pyyaml into .tools/ and checks that this file starts;
     tests start it through `causeway_tests::KubeEmulator` (tests/src/lib.rs).
  2. The original README.md does not ship here: what it says about the served resources and the deviations
     from a real apiserver is copied below, unchanged.
  3. No change to the code. Note that tests/src/lib.rs parses the `-v` request log lines
     ("METHOD PATH?QUERY -> STATUS", see `Emulator.__call__`) to count API writes: keep that format.

Served resources: every CRD given with `--crds` or created later through the API (group, served versions,
plural, kind, scope, shortNames, categories, status subresource), plus v1 namespaces, pods, secrets, configmaps,
services, serviceaccounts, events; events.k8s.io/v1 events; coordination.k8s.io/v1 leases; apps/v1 deployments,
statefulsets; apiextensions.k8s.io/v1 customresourcedefinitions; admissionregistration.k8s.io/v1
mutatingwebhookconfigurations. More built-ins: add a line to `BUILTINS`.

What behaves like the apiserver: one global, increasing resourceVersion; uid, creationTimestamp; generation
(bumped when anything but metadata/status changes, and when deletionTimestamp is set); `/status` writes change
only status and main-resource writes never change status; JSON merge patch, JSON patch (incl. `test`),
server-side apply (merged, creates missing objects); PUT with optimistic concurrency (409 `Conflict`); 404
`NotFound` / 409 `AlreadyExists` reasons (kube-rs `get_opt` works); no-op writes keep the resourceVersion and emit
no event; finalizers (deletionTimestamp, object stays, one DELETED event once emptied); watches with ADDED /
MODIFIED / DELETED, resumption from a resourceVersion (410 `Expired` when too old), `timeoutSeconds`,
`sendInitialEvents` + bookmark, label/field selectors (incl. ADDED/DELETED on selector transitions); lists with
`<Kind>List`, apiVersion, resourceVersion, `limit`/`continue`; legacy and aggregated discovery;
PartialObjectMetadata; `generateName`; `dryRun=All`; delete preconditions.

Deviations from a real apiserver (know these before trusting a green test):

- **JSON only.** No protobuf/CBOR: kubectl's imperative generators (`kubectl create namespace|configmap|secret|
  deployment ...`) send protobuf and get 415. Use `kubectl apply -f` / `create -f`, e.g.
  `kubectl create ns x --dry-run=client -o yaml | kubectl apply -f -`. kube-rs always sends JSON. No `as=Table`
  responses: kubectl prints only NAME/AGE (additionalPrinterColumns ignored).
- **No validation, defaulting, pruning or admission.** CRD `openAPIV3Schema`, CEL rules, `default:`s and
  unknown-field pruning are ignored; `fieldValidation=Strict` is accepted and ignored (`/openapi/v3` is a stub
  that exists only so kubectl's default validation path works; `/openapi/v2` is 404, `kubectl explain` fails).
  Webhook configurations are stored, never called. No TLS, authn or authz (never 401/403; no
  SelfSubjectAccessReview/TokenReview APIs, so `kubectl auth can-i` gets 404).
- **Server-side apply is a JSON merge patch.** No managedFields, field ownership or apply conflicts (`force`
  ignored, `fieldManager` not required); fields dropped from the applied config are *not* removed; lists are
  replaced wholesale (no `listType=map/set` merging of finalizers, conditions, ...). Strategic merge patch on
  built-ins is also a merge patch (`$patch`/`$setElementOrder`/... directives dropped, lists such as containers
  or env replaced, not merged by key); on CRs it is 415, as in the apiserver.
- **No controllers.** No garbage collection (ownerReferences, `propagationPolicy`, foreground/orphan deletion
  ignored); namespace deletion is immediate and leaves the namespace's objects in place; objects may be created
  in namespaces that do not exist; pods never run and are deleted without grace period; deployments,
  statefulsets and services never get status/clusterIP; no endpoints, tokens, event aggregation or lease expiry.
- **Status/generation details.** Status is dropped on create only for CRs with a status subresource (built-ins
  keep a client-sent status; namespaces get `phase: Active`). `metadata.generation` exists for CRs, CRDs,
  MutatingWebhookConfigurations, Deployments and StatefulSets only.
- **Versions and CRDs.** All served versions of a CRD share one stored object and differ only in `apiVersion`
  (no conversion, no per-version schema/subresources: `/status` exists if any served version declares it).
  CRDs are Established immediately with no name-conflict checks; deleting a CRD neither unregisters it nor
  deletes its objects. core/v1 Events and events.k8s.io/v1 Events are separate stores.
- **Lists and watches.** Lists always reflect the latest state (`resourceVersion`/`resourceVersionMatch` ignored,
  never 410); `continue` tokens never expire and later pages see the live store, not a snapshot. Watch with
  resourceVersion "" or "0" starts with synthetic ADDED events; a resourceVersion ahead of the store just
  streams from there (the apiserver would wait). Bookmarks are sent only as the `sendInitialEvents` end marker
  and once when `timeoutSeconds` expires (no periodic bookmarks). A watch without `timeoutSeconds` stays open
  until the client leaves. Deprecated `/watch/` URL paths are not served. Field selectors accept any dotted
  path with `=`, `==`, `!=` on any kind (the apiserver allows only per-kind fields and answers 400 otherwise);
  label selectors support `=`, `==`, `!=`, `in`, `notin`, `key`, `!key` (not `gt`/`lt`).
- **Writes.** PUT to a missing object is always 404 (the apiserver creates on update for some built-in kinds);
  PUT without resourceVersion is 422 for CRs (as in the apiserver) but allowed for built-ins. DELETE returns
  a `Status` (Success) when the object goes at once and the object when finalizers keep it; deletecollection
  returns the list of affected objects. A `dryRun=All` response carries no new resourceVersion, and a dry-run
  CRD is still registered. POST to a cluster-wide URL of a namespaced kind uses `metadata.namespace` or
  `default` instead of failing. No `managedFields`, `selfLink`; `deletionGracePeriodSeconds` is always 0;
  timestamps have second precision; error bodies carry no `details.causes`.
- **Process.** State is in memory only (lost on exit); `/version` reports `v1.33.0-kube-emulator`.
"""
import argparse, asyncio, bisect, copy, dataclasses, datetime, json, os, pathlib, random, re, signal, sys, uuid
from importlib.metadata import version

import aiohttp.web, jsonpatch, jsonpointer, kmock, yaml
from kmock._internal import parsing

if version('kmock') != '0.8':
    print(f"kube-emulator: warning: tested with kmock==0.8, found {version('kmock')}", file=sys.stderr)

VERBS = ['create', 'delete', 'deletecollection', 'get', 'list', 'patch', 'update', 'watch']


def parse_path(path: str) -> parsing.ParsedPath:
    # kmock 0.8 crashes on /api/v1/namespaces and treats /api/v1/namespaces/x as a namespace prefix;
    # this mirrors the apiserver's RequestInfo rules instead (namespaces/<ns>/{status,finalize} is a subresource).
    p = [s for s in path.split('/') if s]
    if len(p) >= 2 and p[0] == 'api':
        group, ver, rest = '', p[1], p[2:]
    elif len(p) == 2 and p[0] == 'apis':
        return parsing.ParsedPath(group=p[1])
    elif len(p) >= 3 and p[0] == 'apis':
        group, ver, rest = p[1], p[2], p[3:]
    else:
        return parsing.ParsedPath()
    ns = None
    if len(rest) >= 3 and rest[0] == 'namespaces' and rest[2] not in ('status', 'finalize'):
        ns, rest = rest[1], rest[2:]
    rest += [None, None]
    return parsing.ParsedPath(group, ver, rest[0], ns, rest[1], '/'.join(s for s in rest[2:] if s) or None)


parsing.parse_path = parse_path  # kmock's Request._parse looks it up at call time


@dataclasses.dataclass
class Res:
    group: str
    versions: list            # served versions, preferred first
    plural: str
    kind: str
    namespaced: bool
    status: bool = False      # has the /status subresource
    generation: bool = False  # stamps metadata.generation (CRs and a few built-ins)
    short: list = dataclasses.field(default_factory=list)
    categories: list = dataclasses.field(default_factory=list)
    custom: bool = False      # custom resource: status dropped on create, RV required on PUT, no strategic merge

    @property
    def gr(self):  # how the apiserver names the resource in messages: "eventstores.causeway.dev"
        return f'{self.plural}.{self.group}' if self.group else self.plural


BUILTINS = [  # group, version, plural, kind, namespaced, status, generation, shortNames, categories
    ('', 'v1', 'namespaces', 'Namespace', False, True, False, ['ns'], []),
    ('', 'v1', 'pods', 'Pod', True, True, False, ['po'], ['all']),
    ('', 'v1', 'secrets', 'Secret', True, False, False, [], []),
    ('', 'v1', 'configmaps', 'ConfigMap', True, False, False, ['cm'], []),
    ('', 'v1', 'services', 'Service', True, True, False, ['svc'], ['all']),
    ('', 'v1', 'serviceaccounts', 'ServiceAccount', True, False, False, ['sa'], []),
    ('', 'v1', 'events', 'Event', True, False, False, ['ev'], []),
    ('events.k8s.io', 'v1', 'events', 'Event', True, False, False, ['ev'], []),
    ('coordination.k8s.io', 'v1', 'leases', 'Lease', True, False, False, [], []),
    ('apps', 'v1', 'deployments', 'Deployment', True, True, True, ['deploy'], ['all']),
    ('apps', 'v1', 'statefulsets', 'StatefulSet', True, True, True, ['sts'], ['all']),
    ('apiextensions.k8s.io', 'v1', 'customresourcedefinitions', 'CustomResourceDefinition', False, True, True,
     ['crd', 'crds'], ['api-extensions']),
    ('admissionregistration.k8s.io', 'v1', 'mutatingwebhookconfigurations', 'MutatingWebhookConfiguration', False,
     False, True, [], ['api-extensions']),
]
CRD = ('apiextensions.k8s.io', 'customresourcedefinitions')
# Server-owned metadata: clients cannot change these through update/patch.
SERVER_META = ('name', 'namespace', 'uid', 'creationTimestamp', 'deletionTimestamp', 'deletionGracePeriodSeconds',
               'generation', 'resourceVersion')


class ApiError(Exception):
    def __init__(self, code, reason, message, details=None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details or {}


def now():
    return datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%dT%H:%M:%SZ')


def version_key(v):  # apiserver priority: GA > beta > alpha, higher numbers first
    m = re.fullmatch(r'v(\d+)(?:(alpha|beta)(\d+))?', v)
    return (3, 0, 0, v) if not m else ({None: 0, 'beta': 1, 'alpha': 2}[m[2]], -int(m[1]), -int(m[3] or 0), v)


def merge_patch(target, patch):  # RFC 7386 (kmock's own merge refuses dict<->scalar replacement)
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def strip_directives(patch):  # strategic-merge directives ($patch, $setElementOrder/...) are dropped
    if isinstance(patch, dict):
        return {k: strip_directives(v) for k, v in patch.items() if not k.startswith('$')}
    return [strip_directives(v) for v in patch] if isinstance(patch, list) else patch


def json_patch(doc, ops):
    if not isinstance(ops, list):
        raise ApiError(400, 'BadRequest', 'json patch must be a list of operations')
    # The apiserver (evanphx/json-patch) lets {"op":"test","value":null} pass on a missing path;
    # kube-rs' finalizer helper relies on that when it adds the first finalizer.
    miss = object()
    ops = [op for op in ops if not (isinstance(op, dict) and op.get('op') == 'test' and op.get('value') is None
                                    and jsonpointer.resolve_pointer(doc, op.get('path', ''), miss) is miss)]
    try:
        return jsonpatch.apply_patch(doc, ops)
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException, TypeError, KeyError) as e:
        raise ApiError(422, 'Invalid', f'the server rejected our request due to an error in our request: {e}')


def parse_label_selector(s):
    reqs = []
    for part in re.findall(r'(?:[^,(]|\([^)]*\))+', s or ''):
        part = part.strip()
        if m := re.fullmatch(r'([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)', part):
            reqs.append((m[1], m[2], {v.strip() for v in m[3].split(',') if v.strip()}))
        elif m := re.fullmatch(r'([\w./-]+)\s*(==|=|!=)\s*([\w./-]*)', part):
            reqs.append((m[1], '!=' if m[2] == '!=' else '=', m[3]))
        elif m := re.fullmatch(r'(!?)\s*([\w./-]+)', part):
            reqs.append((m[2], '!' if m[1] else 'exists', None))
        elif part:
            raise ApiError(400, 'BadRequest', f'unable to parse requirement: {part!r}')
    return reqs


def labels_match(reqs, labels):
    for key, op, val in reqs:
        have = labels.get(key)
        ok = (key in labels and have in val if op == 'in' else have not in val if op == 'notin' else
              key in labels and have == val if op == '=' else have != val if op == '!=' else
              (key in labels) == (op == 'exists'))
        if not ok:
            return False
    return True


def parse_field_selector(s):
    reqs = []
    for part in filter(None, (p.strip() for p in (s or '').split(','))):
        m = re.fullmatch(r'([\w.]+)\s*(==|=|!=)\s*(.*)', part)
        if not m:
            raise ApiError(400, 'BadRequest', f'invalid field selector: {part!r}')
        reqs.append((m[1].split('.'), m[2] == '!=', m[3]))
    return reqs


def fields_match(reqs, obj):
    for path, negate, val in reqs:
        cur = obj
        for p in path:
            cur = cur.get(p) if isinstance(cur, dict) else None
        have = '' if cur is None else json.dumps(cur) if isinstance(cur, bool) else str(cur)
        if (have == val) == negate:
            return False
    return True


class Emulator(kmock.KubernetesScaffold):
    """kmock's scaffold routes /api, /version and unknown paths; resource requests go to `_serve` below."""

    def __init__(self, verbose=False, history=20000):
        super().__init__()
        self.verbose, self.history = verbose, history
        self.res = {}              # (group, version, plural) -> Res
        self.objs = {}             # (group, plural, namespace or '', name) -> object; stored dicts are never mutated
        self.rv = 0                # one global counter, like etcd's revision
        self.log = []              # (rv, (group, plural), type, obj, previous obj) for watch resumption
        self.log_floor = 0         # events with rv <= log_floor were trimmed
        self.wake = asyncio.Event()
        self.closing = False
        for g, v, p, k, nsd, st, gen, short, cats in BUILTINS:
            self.register(Res(g, [v], p, k, nsd, st, gen, short, cats))

    # ---------------------------------------------------------------- registry & discovery
    def register(self, r: Res):
        for v in r.versions:
            self.res[(r.group, v, r.plural)] = r

    def register_crd(self, crd):
        try:
            spec = crd['spec']
            names = spec['names']
            vers = [v for v in spec.get('versions') or [{'name': spec['version']}] if v.get('served', True)]
            self.register(Res(
                spec['group'], sorted((v['name'] for v in vers), key=version_key), names['plural'], names['kind'],
                spec.get('scope', 'Namespaced') == 'Namespaced',
                status=any('status' in (v.get('subresources') or spec.get('subresources') or {}) for v in vers),
                generation=True, short=names.get('shortNames') or [], categories=names.get('categories') or [],
                custom=True))
        except (KeyError, TypeError, AttributeError) as e:
            raise ApiError(422, 'Invalid', f'CustomResourceDefinition is missing {e}')
        storage = [v['name'] for v in vers if v.get('storage')] or [vers[0]['name']]
        ts = crd['metadata'].get('creationTimestamp') or now()  # fixed, so re-applying the CRD stays a no-op
        crd['status'] = {'acceptedNames': names, 'storedVersions': storage, 'conditions': [
            {'type': t, 'status': 'True', 'reason': r, 'message': m, 'lastTransitionTime': ts} for t, r, m in [
                ('NamesAccepted', 'NoConflicts', 'no conflicts found'),
                ('Established', 'InitialNamesAccepted', 'the initial names have been accepted')]]}

    def _group_versions(self):
        out = {}
        for (g, v, _), r in self.res.items():
            if g and v not in out.setdefault(g, []):
                out[g].append(v)
        return {g: sorted(vs, key=version_key) for g, vs in out.items()}

    @staticmethod
    def _group_doc(g, vs):  # kmock picks preferredVersion from an unordered set; use the apiserver's priority
        gv = [{'groupVersion': f'{g}/{v}', 'version': v} for v in vs]
        return {'name': g, 'versions': gv, 'preferredVersion': gv[0]}

    async def _serve_apis(self, request):
        return {'kind': 'APIGroupList', 'apiVersion': 'v1',
                'groups': [self._group_doc(g, vs) for g, vs in self._group_versions().items()]}

    async def _serve_group(self, request):
        vs = self._group_versions().get(request.resource.group)
        if not vs:
            raise kmock.KubernetesResourceNotFoundError()
        return {'kind': 'APIGroup', 'apiVersion': 'v1', **self._group_doc(request.resource.group, vs)}

    async def _serve_version(self, request):
        # kmock copies shortNames/categories/verbs onto "x/status" entries, which makes kubectl resolve
        # `get <shortname|category>` to the subresource; list subresources the way the apiserver does.
        g, v = request.resource.group, request.resource.version
        out = []
        for (rg, rv, p), r in self.res.items():
            if (rg, rv) == (g, v):
                out.append({'name': p, 'singularName': r.kind.lower(), 'namespaced': r.namespaced, 'kind': r.kind,
                            'verbs': VERBS, 'shortNames': r.short, 'categories': r.categories})
                if r.status:
                    out.append({'name': f'{p}/status', 'singularName': '', 'namespaced': r.namespaced,
                                'kind': r.kind, 'verbs': ['get', 'patch', 'update']})
        if not out and g:
            raise kmock.KubernetesResourceNotFoundError()
        return {'kind': 'APIResourceList', 'apiVersion': 'v1', 'groupVersion': f'{g}/{v}' if g else v,
                'resources': out}

    def _aggregated_discovery(self, core):
        # apidiscovery.k8s.io/v2, which kubectl >= 1.30 and kube-rs Discovery::run_aggregated() ask for first.
        groups = {}
        for (g, v, p), r in self.res.items():
            if (g == '') == core:
                kind = {'group': g, 'version': v, 'kind': r.kind}
                groups.setdefault(g, {}).setdefault(v, []).append({
                    'resource': p, 'responseKind': kind, 'scope': 'Namespaced' if r.namespaced else 'Cluster',
                    'singularResource': r.kind.lower(), 'verbs': VERBS, 'shortNames': r.short,
                    'categories': r.categories, 'subresources': [
                        {'subresource': 'status', 'responseKind': kind, 'verbs': ['get', 'patch', 'update']}
                    ] if r.status else []})
        body = {'kind': 'APIGroupDiscoveryList', 'apiVersion': 'apidiscovery.k8s.io/v2', 'metadata': {}, 'items': [
            {'metadata': {'name': g}, 'versions': [{'version': v, 'resources': vers[v], 'freshness': 'Current'}
                                                   for v in sorted(vers, key=version_key)]}
            for g, vers in groups.items()]}
        return aiohttp.web.Response(body=json.dumps(body).encode(), headers={
            'Content-Type': 'application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList'})

    def _openapi_v3(self, gv_path):
        # Just enough for kubectl's default --validate=strict to choose server-side field validation (a PATCH
        # operation per kind that lists the fieldValidation parameter), which this emulator then ignores.
        paths = {}
        for (g, v, p), r in self.res.items():
            gvp = f'/apis/{g}/{v}' if g else f'/api/{v}'
            if not gv_path:
                paths[gvp[1:]] = {'serverRelativeURL': f'/openapi/v3{gvp}'}
            elif gvp == gv_path:
                paths[f'{gvp}{"/namespaces/{namespace}" if r.namespaced else ""}/{p}/{{name}}'] = {'patch': {
                    'x-kubernetes-group-version-kind': {'group': g, 'version': v, 'kind': r.kind},
                    'parameters': [{'name': 'fieldValidation', 'in': 'query', 'schema': {'type': 'string'}}],
                    'responses': {'200': {'description': 'OK'}}}}
        if not gv_path:
            return {'paths': paths}
        return {'openapi': '3.0.0', 'info': {'title': 'Kubernetes', 'version': 'v1.33.0'}, 'paths': paths}

    async def _serve_server_version(self, request):
        return {'major': '1', 'minor': '33', 'gitVersion': 'v1.33.0-kube-emulator', 'platform': 'linux/amd64',
                'gitCommit': '', 'gitTreeState': 'clean', 'buildDate': '', 'goVersion': '', 'compiler': 'gc'}

    # ---------------------------------------------------------------- HTTP plumbing
    async def __call__(self, raw):
        resp = await super().__call__(raw)
        if self.verbose:
            print(f'{raw.method} {raw.path_qs} -> {resp.status}', file=sys.stderr, flush=True)
        return resp

    async def _handle(self, request):
        try:
            accept = request.headers.get('Accept', '')
            if request.url.path in ('/api', '/apis') and 'as=APIGroupDiscoveryList' in accept:
                return self._aggregated_discovery(core=request.url.path == '/api')
            if request.url.path.startswith('/openapi/v3'):
                return aiohttp.web.json_response(self._openapi_v3(request.url.path[len('/openapi/v3'):]))
            if request.resource is None or request.resource.plural is None:
                return await super()._handle(request)  # discovery, /version, and kmock's 404 for the rest
            return await self._serve(request)
        except ApiError as e:
            return aiohttp.web.json_response({
                'kind': 'Status', 'apiVersion': 'v1', 'metadata': {}, 'status': 'Failure', 'message': e.message,
                'reason': e.reason, 'details': e.details, 'code': e.code}, status=e.code)
        finally:  # kmock keeps every request for test assertions (and matches reactions against that list);
            self._requests.remove(request)  # drop it once served, or a long-running server grows without bound

    def close(self):  # end open watches so that aiohttp's shutdown does not wait for them
        self.closing = True
        self.wake.set()

    async def _serve(self, req):
        rs, q, m = req.resource, req.params, req.method
        r = self.res.get((rs.group, rs.version, rs.plural))
        if r is None or (req.subresource and (req.subresource != 'status' or not r.status)):
            raise ApiError(404, 'NotFound', 'the server could not find the requested resource')
        ns = req.namespace if r.namespaced else None
        if r.namespaced and req.name and not ns:
            raise ApiError(404, 'NotFound', 'the server could not find the requested resource')
        ctx = dict(r=r, av=f'{rs.group}/{rs.version}' if rs.group else rs.version, ns=ns, name=req.name,
                   meta_only='as=PartialObjectMetadata' in req.headers.get('Accept', ''))
        dry = 'All' in q.get('dryRun', '')
        body = self._body(req)
        if m == 'GET' and q.get('watch') in ('true', '1'):
            return await self._watch(req, q, **ctx)
        if m == 'GET':
            return aiohttp.web.json_response(self._get(**ctx) if req.name else self._list(q, **ctx))
        if m == 'POST' and not req.name:
            return aiohttp.web.json_response(self._out(self._create(r, ns, body, dry, ctx['av']), **ctx), status=201)
        if m == 'PUT' and req.name:
            return aiohttp.web.json_response(self._out(self._update(ctx, req.subresource, body, dry), **ctx))
        if m == 'PATCH' and req.name:
            ctype = req.headers.get('Content-Type', '').split(';')[0].strip()
            obj, created = self._patch(ctx, req.subresource, ctype, body, dry)
            return aiohttp.web.json_response(self._out(obj, **ctx), status=201 if created else 200)
        if m == 'DELETE' and req.name:
            return aiohttp.web.json_response(self._delete(ctx, self._key(r, ns, req.name), body, dry))
        if m == 'DELETE':  # deletecollection
            items = [self._delete(ctx, k, body, dry) for k, _ in list(self._select(q, **ctx))]
            return aiohttp.web.json_response({'kind': f'{r.kind}List', 'apiVersion': ctx['av'], 'items': items,
                                              'metadata': {'resourceVersion': str(self.rv)}})
        raise ApiError(405, 'MethodNotAllowed', f'{m} is not supported on this path')

    @staticmethod
    def _body(req):
        if not req.body:
            return None
        if 'protobuf' in req.headers.get('Content-Type', '') or 'cbor' in req.headers.get('Content-Type', ''):
            raise ApiError(415, 'UnsupportedMediaType', 'kube-emulator speaks JSON only (no protobuf/CBOR)')
        try:  # apply patches may be YAML; everything else is JSON
            return json.loads(req.body)
        except ValueError:
            try:
                return yaml.safe_load(req.body)
            except yaml.YAMLError as e:
                raise ApiError(400, 'BadRequest', f'cannot decode request body: {e}')

    @staticmethod
    def _key(r, ns, name):
        return (r.group, r.plural, ns or '', name)

    def _out(self, obj, r, av, meta_only=False, **_):
        if meta_only:  # kube-rs metadata_watcher / get_metadata ask for PartialObjectMetadata
            return {'apiVersion': 'meta.k8s.io/v1', 'kind': 'PartialObjectMetadata', 'metadata': obj['metadata']}
        return {**obj, 'apiVersion': av}  # objects are stored once; each served version only relabels them

    def _not_found(self, r, name):
        return ApiError(404, 'NotFound', f'{r.gr} "{name}" not found', {'name': name, 'group': r.group,
                                                                        'kind': r.plural})

    def _conflict(self, r, name, why='the object has been modified; please apply your changes to the latest '
                                     'version and try again'):
        return ApiError(409, 'Conflict', f'Operation cannot be fulfilled on {r.gr} "{name}": {why}',
                        {'name': name, 'group': r.group, 'kind': r.plural})

    # ---------------------------------------------------------------- reads
    def _get(self, r, ns, name, **ctx):
        obj = self.objs.get(self._key(r, ns, name))
        if obj is None:
            raise self._not_found(r, name)
        return self._out(obj, r, **ctx)

    def _select(self, q, r, ns, name=None, **_):
        lsel, fsel = parse_label_selector(q.get('labelSelector')), parse_field_selector(q.get('fieldSelector'))
        for key in sorted(k for k in self.objs if k[:2] == (r.group, r.plural) and (ns is None or k[2] == ns)):
            obj = self.objs[key]
            if (name is None or key[3] == name) and labels_match(lsel, obj['metadata'].get('labels') or {}) \
                    and fields_match(fsel, obj):
                yield key, obj

    def _list(self, q, r, av, **ctx):
        items = list(self._select(q, r, **ctx))
        md = {'resourceVersion': str(self.rv)}
        if q.get('continue'):  # the token is the last key served; pages see the live store, not a snapshot
            try:
                last = tuple(json.loads(q['continue']))
            except ValueError:
                raise ApiError(400, 'BadRequest', 'invalid continue token')
            items = [(k, o) for k, o in items if k > last]
        limit = int(q['limit']) if q.get('limit', '').isdigit() else 0
        if 0 < limit < len(items):
            items = items[:limit]
            md['continue'] = json.dumps(list(items[-1][0]))
        kind = 'PartialObjectMetadataList' if ctx.get('meta_only') else f'{r.kind}List'
        return {'kind': kind, 'apiVersion': 'meta.k8s.io/v1' if ctx.get('meta_only') else av, 'metadata': md,
                'items': [self._out(o, r, av, **ctx) for _, o in items]}

    # ---------------------------------------------------------------- writes
    def _save(self, r, key, new, old, dry, delete=False):
        """The single commit point: no-op detection, generation, resourceVersion, finalizer-gated deletion, events."""
        if key[:2] == CRD and not delete:
            self.register_crd(new)
        if old is not None and new == old and not delete:
            return old  # like the apiserver: an unchanged object keeps its resourceVersion and emits no event
        if dry:
            return new
        md = new['metadata']
        if old is not None and r.generation and 'generation' in md:
            ignored = ('metadata', 'status') if r.status else ('metadata',)
            if {k: v for k, v in new.items() if k not in ignored} != {k: v for k, v in old.items() if k not in ignored}:
                md['generation'] = old['metadata'].get('generation', 1) + 1
        gone = delete or bool(md.get('deletionTimestamp') and not md.get('finalizers'))
        self.rv += 1
        md['resourceVersion'] = str(self.rv)
        if gone:
            self.objs.pop(key, None)
        else:
            self.objs[key] = new
        self.log.append((self.rv, key[:2], 'DELETED' if gone else 'MODIFIED' if old else 'ADDED', new, old))
        if len(self.log) > self.history:
            self.log_floor = self.log[-self.history - 1][0]
            del self.log[:-self.history]
        self.wake.set()
        self.wake = asyncio.Event()
        return new

    def _create(self, r, ns, body, dry, av):
        if not isinstance(body, dict):
            raise ApiError(400, 'BadRequest', 'request body must be an object')
        obj = copy.deepcopy(body)
        md = obj['metadata'] = dict(obj.get('metadata') or {})
        if r.namespaced:
            if ns and md.get('namespace') not in (None, '', ns):
                raise ApiError(400, 'BadRequest', 'the namespace of the provided object does not match the '
                                                  'namespace sent on the request')
            md['namespace'] = ns = ns or md.get('namespace') or 'default'
        else:
            md.pop('namespace', None)
        if not md.get('name') and md.get('generateName'):
            md['name'] = md['generateName'] + ''.join(random.choices('bcdfghjklmnpqrstvwxz2456789', k=5))
        if not md.get('name'):
            raise ApiError(422, 'Invalid', f'{r.kind} is invalid: metadata.name: Required value: name or '
                                           'generateName is required')
        key = self._key(r, ns, md['name'])
        if key in self.objs:
            raise ApiError(409, 'AlreadyExists', f'{r.gr} "{md["name"]}" already exists',
                           {'name': md['name'], 'group': r.group, 'kind': r.plural})
        for f in SERVER_META[2:]:
            md.pop(f, None)
        md.update(uid=str(uuid.uuid4()), creationTimestamp=now())
        if r.generation:
            md['generation'] = 1
        obj = {'apiVersion': av, 'kind': r.kind, **{k: v for k, v in obj.items() if k not in ('apiVersion', 'kind')}}
        if r.custom and r.status:
            obj.pop('status', None)  # CRs with a status subresource ignore status on create
        if r.kind == 'Namespace':
            obj['status'] = {'phase': 'Active'}
        return self._save(r, key, obj, None, dry)

    def _current(self, r, ns, name):
        old = self.objs.get(self._key(r, ns, name))
        if old is None:
            raise self._not_found(r, name)
        return old

    def _finish(self, r, old, cand, sub):
        """What the apiserver enforces on every update: /status changes only status; the main resource never
        changes status (when there is a status subresource); server-owned metadata is kept."""
        if not isinstance(cand, dict) or not isinstance(cand.get('metadata', {}), dict):
            raise ApiError(400, 'BadRequest', 'object and metadata must be JSON objects')
        omd = old['metadata']
        pre = cand.get('metadata', {})  # a resourceVersion/uid in the body is a precondition
        if pre.get('resourceVersion') not in (None, '', omd['resourceVersion']):
            raise self._conflict(r, omd['name'])
        if pre.get('uid') not in (None, '', omd['uid']):
            raise self._conflict(r, omd['name'], f'Precondition failed: UID in precondition: {pre["uid"]}, '
                                                 f'UID in object meta: {omd["uid"]}')
        new, status_from = (copy.deepcopy(old), cand) if sub == 'status' else (copy.deepcopy(cand), r.status and old)
        if status_from:
            new.pop('status', None)
            if 'status' in status_from:
                new['status'] = copy.deepcopy(status_from['status'])
        md = new.setdefault('metadata', {})
        for f in SERVER_META:
            md.pop(f, None)
            if f in omd:
                md[f] = omd[f]
        new['apiVersion'], new['kind'] = old['apiVersion'], old['kind']
        if omd.get('deletionTimestamp') and set(md.get('finalizers') or []) - set(omd.get('finalizers') or []):
            raise ApiError(422, 'Invalid', 'metadata.finalizers: Forbidden: no new finalizers can be added if the '
                                           'object is being deleted')
        return new

    def _update(self, ctx, sub, body, dry):
        r, ns, name = ctx['r'], ctx['ns'], ctx['name']
        old = self._current(r, ns, name)
        if not isinstance(body, dict):
            raise ApiError(400, 'BadRequest', 'request body must be an object')
        bmd = body.get('metadata') or {}
        if bmd.get('name') not in (None, name):
            raise ApiError(400, 'BadRequest', 'the name of the object does not match the name on the URL')
        if r.custom and not bmd.get('resourceVersion'):
            raise ApiError(422, 'Invalid', f'{r.kind}.{r.group} "{name}" is invalid: metadata.resourceVersion: '
                                           'Invalid value: 0x0: must be specified for an update')
        return self._save(r, self._key(r, ns, name), self._finish(r, old, body, sub), old, dry)

    def _patch(self, ctx, sub, ctype, body, dry):
        r, ns, name = ctx['r'], ctx['ns'], ctx['name']
        old = self.objs.get(self._key(r, ns, name))
        if ctype == 'application/apply-patch+yaml' and old is None and sub is None:
            # Server-side apply creates missing objects (treated as create + merge; no managedFields).
            obj = body if not isinstance(body, dict) else {**body, 'metadata': {**(body.get('metadata') or {}),
                                                                                'name': name}}
            return self._create(r, ns, obj, dry, ctx['av']), True
        if old is None:
            raise self._not_found(r, name)
        if ctype == 'application/json-patch+json':
            cand = json_patch(old, body)
        elif ctype in ('application/merge-patch+json', 'application/apply-patch+yaml'):
            cand = merge_patch(old, body)
        elif ctype == 'application/strategic-merge-patch+json' and not r.custom:
            cand = merge_patch(old, strip_directives(body))  # lists are replaced, not merged by key
        else:
            raise ApiError(415, 'UnsupportedMediaType', 'the body of the request was in an unknown format - '
                                                        'accepted media types include: application/json-patch+json, '
                                                        'application/merge-patch+json, application/apply-patch+yaml')
        return self._save(r, self._key(r, ns, name), self._finish(r, old, cand, sub), old, dry), False

    def _delete(self, ctx, key, opts, dry):
        r, name = ctx['r'], key[3]
        old = self._current(r, key[2] or None, name)
        omd = old['metadata']
        pre = (opts or {}).get('preconditions') or {} if isinstance(opts, dict) else {}
        if pre.get('resourceVersion') not in (None, omd['resourceVersion']) or pre.get('uid') not in (None, omd['uid']):
            raise self._conflict(r, name, 'Precondition failed')
        if omd.get('finalizers'):  # finalizers keep the object; it goes once they are emptied (see _save)
            if omd.get('deletionTimestamp'):
                return self._out(old, **ctx)
            new = copy.deepcopy(old)
            new['metadata'].update(deletionTimestamp=now(), deletionGracePeriodSeconds=0)
            if 'generation' in omd:
                new['metadata']['generation'] = omd['generation'] + 1  # the apiserver bumps it here too
            return self._out(self._save(r, key, new, old, dry), **ctx)
        self._save(r, key, copy.deepcopy(old), old, dry, delete=True)
        return {'kind': 'Status', 'apiVersion': 'v1', 'metadata': {}, 'status': 'Success',
                'details': {'name': name, 'group': r.group, 'kind': r.plural, 'uid': omd['uid']}}

    # ---------------------------------------------------------------- watch
    async def _watch(self, req, q, r, av, ns, name=None, **ctx):
        lsel, fsel = parse_label_selector(q.get('labelSelector')), parse_field_selector(q.get('fieldSelector'))
        rv_arg = q.get('resourceVersion', '')
        if rv_arg not in ('', '0') and not rv_arg.isdigit():
            raise ApiError(400, 'BadRequest', f'invalid resourceVersion: {rv_arg!r}')
        timeout = int(q['timeoutSeconds']) if q.get('timeoutSeconds', '').isdigit() else None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout else None
        bookmarks = q.get('allowWatchBookmarks') == 'true'

        def match(o):
            return o is not None and (ns is None or o['metadata'].get('namespace') == ns) \
                and (name is None or o['metadata']['name'] == name) \
                and labels_match(lsel, o['metadata'].get('labels') or {}) and fields_match(fsel, o)

        raw = req._raw_request
        resp = aiohttp.web.StreamResponse(headers={'Content-Type': 'application/json'})
        await resp.prepare(raw)

        async def send(typ, obj):
            await resp.write(json.dumps({'type': typ, 'object': obj}).encode() + b'\n')

        def bookmark(rv, **ann):
            return {'kind': r.kind, 'apiVersion': av, 'metadata': {'resourceVersion': str(rv), 'annotations': ann}}

        try:
            if rv_arg in ('', '0') or q.get('sendInitialEvents') == 'true':
                # No (or "any") resourceVersion: synthetic ADDED for the current state, then live events.
                cursor, snapshot = self.rv, [o for _, o in self._select({}, r, ns, name) if match(o)]
                for o in snapshot:
                    await send('ADDED', self._out(o, r, av, **ctx))
                if q.get('sendInitialEvents') == 'true':
                    await send('BOOKMARK', bookmark(cursor, **{'k8s.io/initial-events-end': 'true'}))
            else:
                cursor = int(rv_arg)  # resume: only events after this resourceVersion
            while not self.closing:
                wake = self.wake
                if cursor < self.log_floor:
                    await send('ERROR', {'kind': 'Status', 'apiVersion': 'v1', 'metadata': {}, 'status': 'Failure',
                                         'reason': 'Expired', 'code': 410,
                                         'message': f'too old resource version: {cursor} ({self.log_floor})'})
                    break
                for erv, rkey, typ, obj, prev in self.log[bisect.bisect_right(self.log, cursor, key=lambda e: e[0]):]:
                    cursor = erv
                    if rkey != (r.group, r.plural):
                        continue
                    now_in, was_in = match(obj), match(prev)
                    if typ == 'MODIFIED' and now_in != was_in:  # selector transitions, as the apiserver does
                        typ = 'ADDED' if now_in else 'DELETED'
                    if now_in or (was_in and typ == 'DELETED'):
                        await send(typ, self._out(obj, r, av, **ctx))
                left = deadline - loop.time() if deadline else 5.0
                if left <= 0:
                    if bookmarks:  # lets the client resume from here even if the history gets trimmed
                        await send('BOOKMARK', bookmark(cursor))
                    break
                try:
                    await asyncio.wait_for(wake.wait(), min(left, 5.0))
                except TimeoutError:
                    if raw.transport is None or raw.transport.is_closing():
                        break  # the client went away
            await resp.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # client disconnected mid-write
        return resp

    def seed(self, g, v, p, body):
        r = self.res[(g, v, p)]
        if self._key(r, (body.get('metadata') or {}).get('namespace'), body['metadata']['name']) not in self.objs:
            self._create(r, (body.get('metadata') or {}).get('namespace'), body, False, f'{g}/{v}' if g else v)


def load_crds(paths):
    files = []
    for p in map(pathlib.Path, paths):
        files += sorted(f for f in p.rglob('*') if f.suffix in ('.yaml', '.yml', '.json')) if p.is_dir() else [p]
    for f in files:
        for doc in yaml.safe_load_all(f.read_text()):
            for d in (doc.get('items') or []) if isinstance(doc, dict) and doc.get('kind') == 'List' else [doc]:
                if isinstance(d, dict) and d.get('kind') == 'CustomResourceDefinition':
                    yield d


def write_atomic(path, text):
    tmp = f'{path}.tmp{os.getpid()}'
    pathlib.Path(tmp).write_text(text)
    os.replace(tmp, path)


async def amain(args):
    emu = Emulator(verbose=args.verbose, history=args.watch_history)
    for crd in load_crds(args.crds):
        emu.seed('apiextensions.k8s.io', 'v1', 'customresourcedefinitions', crd)
        print(f'kube-emulator: registered {crd["metadata"]["name"]}', file=sys.stderr)
    for ns in dict.fromkeys(['default', args.namespace]):
        emu.seed('', 'v1', 'namespaces', {'metadata': {'name': ns}})
    async with emu, kmock.Server(emu, host=args.host, port=args.port or None) as srv:
        url = f'http://{srv.host}:{srv.port}'
        if args.kubeconfig:
            write_atomic(args.kubeconfig, yaml.safe_dump({
                'apiVersion': 'v1', 'kind': 'Config', 'current-context': 'kube-emulator', 'preferences': {},
                'clusters': [{'name': 'kube-emulator', 'cluster': {'server': url}}],
                'users': [{'name': 'kube-emulator', 'user': {}}],
                'contexts': [{'name': 'kube-emulator', 'context': {
                    'cluster': 'kube-emulator', 'user': 'kube-emulator', 'namespace': args.namespace}}]}))
        print(f'kube-emulator: serving {url}', flush=True)
        if args.ready_file:
            write_atomic(args.ready_file, url + '\n')
        stop = asyncio.Event()
        for s in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(s, stop.set)
        await stop.wait()
        emu.close()
    if args.ready_file:
        pathlib.Path(args.ready_file).unlink(missing_ok=True)
    print('kube-emulator: stopped', file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description='In-memory Kubernetes API emulator (kmock==0.8) for operator tests.')
    ap.add_argument('--port', type=int, required=True, help='TCP port; 0 picks a free one')
    ap.add_argument('--host', default='127.0.0.1')
    ap.add_argument('--crds', nargs='+', action='extend', default=[], metavar='DIR_OR_FILE',
                    help='YAML/JSON files or directories (recursive) containing CustomResourceDefinitions')
    ap.add_argument('--kubeconfig', metavar='OUT', help='write a kubeconfig (plain http, no auth) here')
    ap.add_argument('--namespace', default='default', help='default namespace of the kubeconfig context')
    ap.add_argument('--ready-file', metavar='F', help='written (containing the URL) once the server accepts '
                                                      'connections; removed on exit')
    ap.add_argument('--watch-history', type=int, default=20000, metavar='N',
                    help='watch events kept for resuming watches; older resourceVersions get 410 Expired')
    ap.add_argument('-v', '--verbose', action='store_true', help='log every request to stderr')
    asyncio.run(amain(ap.parse_args()))


if __name__ == '__main__':
    main()
