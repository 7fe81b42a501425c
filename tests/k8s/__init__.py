"""
Kubernetes test harness for AlignOps: an emulated API server (kmock 0.8 + the semantics kopf and
kubectl need), the real ``kubectl``, kopf in-process or in a subprocess, and a node agent that runs
Jobs' pods as local processes.  No cluster, no Docker, no network.

Modules
-------
``emulator``  ``ClusterEmulator`` (a ``kmock.KubernetesEmulator`` subclass), ``register_custom_resource``,
              ``register_crd``.
``server``    ``ApiServer`` (HTTP on 127.0.0.1:<free port> in a background thread + a kubeconfig),
              ``run_kubectl``, ``KubectlStream`` (``kubectl get -w``), ``KopfInProcess``, ``KopfSubprocess``,
              ``use_kubeconfig``, ``wait_until``.
``node_agent`` ``NodeAgent``: a kubelet + Job controller + scheduler with fault injection.
``fixtures``  the pytest fixtures below (tests/k8s/conftest.py imports them; another test package
              can do ``from <this package>.fixtures import *`` in its conftest.py).

Fixtures
--------
``k8s_api``          session: the started ``ApiServer`` -- ``.url``, ``.kubeconfig``, ``.emulator``,
                     helpers ``.get/.list/.wait_for/.wait_gone/.http/.call/.create_namespace``;
                     ``KUBECONFIG`` and the ``kubernetes`` package point at it while it runs.
``k8s_namespace``    a fresh namespace per test (deleted afterwards); use it, objects persist all session.
``kubectl``          ``kubectl(*args, input=None, namespace=None, timeout=30)`` -> CompletedProcess, never raises.
``kubectl_ok``       the same, asserting exit code 0 (with kubectl's stderr in the message).
``kubectl_json``     ``kubectl_json('get', 'pods', namespace=ns)`` -> parsed ``-o json``.
``node_agent``       a started ``NodeAgent`` (workdir under ``tmp_path``); fails the test on agent errors.
``kopf_runner``      ``with kopf_runner(path, wait_for=[...]) as op:`` kopf in a thread (``KopfRunner``).
``kopf_subprocess``  ``with kopf_subprocess(path, wait_for=[...]) as op:`` ``python -m kopf run`` child.
(autouse)            a test fails if the emulator answered any request with its own 500 (a harness bug).

A typical end-to-end test
-------------------------
::

    import yaml
    from .emulator import register_crd

    CRD = yaml.safe_load(open('crds/alignmentjobs.alignops.io.yaml'))

    @pytest.mark.timeout(60)
    def test_sft_job(k8s_api, k8s_namespace, node_agent, kopf_runner, kubectl_ok, tmp_path):
        register_crd(k8s_api.emulator, CRD)              # or kubectl_ok('apply', '-f', crd_path, ...)
        with kopf_runner('operator/alignops/operator/main.py',      # or modules=['alignops.operator']
                         wait_for=['alignops.io/v1alpha1/alignmentjobs']) as op:
            kubectl_ok('apply', '--validate=false', '-f', 'pipelines/sft.yaml', namespace=k8s_namespace)
            job = k8s_api.wait_for('batch/v1/jobs', k8s_namespace, 'x-sft',
                                   lambda j: any(c['type'] == 'Complete' for c in j['status'].get('conditions', [])))
        assert op.exit_code == 0

Registering custom resources
---------------------------
* ``register_crd(emulator, crd_dict)``: all served versions (sharing the storage version's objects),
  short names, scope, subresources, printer columns; also stores the CRD object.
* ``register_custom_resource(emulator, 'example.io', 'v1', 'widgets', 'Widget', short_names=['wd'],
  namespaced=True, subresources=('status',), printer_columns=[{'name': 'Phase', 'type': 'string',
  'jsonPath': '.status.phase'}])`` -> the ``kmock.resource`` for ``emulator.objects[res, ns, name]``.
* ``kubectl apply -f crd.yaml`` works too: creating a CRD through the API registers its type.
Resource names in helpers: ``'v1/pods'``, ``'batch/v1/jobs'``, ``'alignops.io/v1alpha1/alignmentjobs'``.

Running kopf
------------
* In-process (fast, ~1 s to ready): ``KopfInProcess(api, *paths, modules=(), registry=None,
  namespaces=None (-A), wait_for=(), verbose=True)`` wraps kopf's documented ``kopf.testing.KopfRunner``
  (``kopf run --standalone``); files are loaded into a fresh registry each time (``new_registry()``:
  kopf's default registry class, which brings the login handlers -- a bare ``kopf.OperatorRegistry()``
  has none and kopf then fails with "Ran out of valid credentials").  A module given with
  ``modules=`` registers its handlers only on its first import in the process: for repeated runs of
  the same module prefer ``KopfSubprocess``.  Exceptions from the operator are re-raised on exit;
  ``op.output`` has kopf's log.  NB: click's CliRunner swaps ``sys.stdout`` while the operator runs,
  so ``print()`` inside the ``with`` block ends up in ``op.output``.
* Subprocess: ``KopfSubprocess(api, *paths, modules=(), env={...}, wait_for=())`` runs
  ``python -m kopf run --standalone -A`` with ``KUBECONFIG`` set; ``op.log()`` reads its output.
* ``wait_for`` resources: ``start``/``__enter__`` returns once the operator's watch streams on them
  are open (``api.watcher_count(res)``), so objects created afterwards are seen as new.
* ``use_kubeconfig(path)`` fixes the ``kubernetes`` package's import-time ``KUBECONFIG`` capture
  (patches ``kube_config.KUBE_CONFIG_DEFAULT_LOCATION`` and loads the default client config).

The node agent
--------------
``NodeAgent(api, workdir=...)`` (or the ``node_agent`` fixture) watches Jobs in all namespaces and
runs each pod's first container locally (see node_agent.py for the exact semantics):
``agent.pods_of(job, ns)`` -> ``PodRun`` (``.name``, ``.dir``, ``.process``, ``.log_path``),
``agent.logs(ns, pod)`` (also ``kubectl logs``), ``agent.image_entrypoints[r'alignops/trainer'] =
['python', '-m', 'alignops.train']`` for containers without ``command``, ``agent.env`` for extra
environment.  Fault injection per test, by Job name (``re.search``)::

    node_agent.faults.unschedulable(r'^rollout-')      # Pending, PodScheduled=False, Unschedulable
    node_agent.faults.unschedulable(r'^rdzv-', index=1)  # only completion index 1 of an Indexed Job
    node_agent.faults.image_pull(r'^rollout-')         # Pending, ErrImagePull -> ImagePullBackOff
    node_agent.faults.oom(r'^sft-', after=1.0)         # exitCode 137, reason OOMKilled
    node_agent.faults.clear()                          # Pending pods then proceed

API-level faults use kmock's DSL on the emulator (consulted before the emulation; a view filters the
whole request history, so ``[:1]`` means the first such request ever)::

    k8s_api.call(lambda: k8s_api.emulator['patch', re.compile(r'.*/alignmentjobs/.*/status')][:3] << 500)

Behaviour worth knowing (like a real cluster)
---------------------------------------------
* A batch/v1 Job deleted through the API *without* ``propagationPolicy`` orphans its pods (the real
  default for batch/v1; ``kubectl delete`` sends Background).  ``emulator.job_default_propagation``.
* Pods bound to a node are deleted gracefully: they keep ``deletionTimestamp`` until the node agent
  has stopped the process; with no agent running they stay Terminating (like a dead node).
* Objects in a namespace that does not exist are refused (404), as is a Job without
  ``restartPolicy: Never|OnFailure``, an invalid name or label value, and strategic-merge patches
  of custom resources (415; use ``--type=merge``).
Deviations: no OpenAPI documents (use ``kubectl apply --validate=false``); protobuf bodies are decoded
only for Secret/ConfigMap/Namespace (``kubectl create secret|configmap|namespace``; other typed
``kubectl create`` commands get 415: use ``apply -f``); no authn/authz, admission, CRD schema
validation/pruning or conversion webhooks; server-side apply is a merge without field ownership;
the agent runs only the first container, treats ``OnFailure`` like ``Never`` (a new pod per retry),
does not enforce resource limits, and of ``podFailurePolicy`` evaluates exit-code rules and the pod
conditions it writes itself (it never sets ``DisruptionTarget``).

Indexed Jobs across "nodes" (tests/k8s/README.md): each completion index is its own pod and its own
local process, with the hostname ``<job>-<index>``; every pod shares this machine's network, so an
env value naming a pod by DNS (``<host>.<service>[.<ns>[.svc[.cluster.local]]]``) becomes
``127.0.0.1`` when that Service exists, and the pods of one run must use distinct ports.

kmock 0.8 gaps handled in ``ClusterEmulator`` (see /work/shared/TESTING.md)
------------------------------------------------------------------------
Request handling is replaced (``__call__``) -- own URL parsing (kmock's fails on
``/api/v1/namespaces``) and direct dispatch (kmock's DSL scans the whole request history for every
request: the reason for its ~45 ms/request) -- while keeping kmock's object store
(``emulator.objects[...]`` with the history of every object) and user reactions.  Added: uid /
resourceVersion / creationTimestamp / generation, generateName, Status errors (404/409/410/415/422),
list kind/apiVersion/resourceVersion, watches with ``application/json``, resumption and 410,
label/field selectors, status-subresource isolation, PUT, JSON-patch ``test`` -> 422, finalizers,
graceful pod deletion, propagation policies and a garbage collector, namespace termination, core
discovery (``groupVersion: v1``, clean subresource entries), server-side Tables (``kubectl get``
columns), ``pods/log``.  Measured: a minimal kopf operator turns 200 applied objects into 200 Jobs
in about 2 s (kmock as is: about 97 s).
"""
