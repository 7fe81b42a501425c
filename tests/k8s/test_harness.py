"""
Proves the Kubernetes test harness: the emulated API server against the real kubectl, the
``kubernetes`` client and kopf, plus the node agent that runs Jobs as local processes.
"""
from __future__ import annotations

import json
import socket
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from .emulator import register_crd, register_custom_resource
from .server import ApiServer, KubectlStream, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60),
              pytest.mark.filterwarnings('ignore:HTTPResponse.getheader:DeprecationWarning')]  # kubernetes client

WIDGETS = 'example.io/v1/widgets'

WIDGET_CRD = yaml.safe_load("""
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: gadgets.example.io}
spec:
  group: example.io
  scope: Namespaced
  names: {plural: gadgets, singular: gadget, kind: Gadget, shortNames: [gd]}
  versions:
  - name: v1alpha1
    served: true
    storage: false
    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
    additionalPrinterColumns:
    - {name: Color, type: string, jsonPath: .spec.color}
    - {name: Phase, type: string, jsonPath: .status.phase}
""")

OPERATOR = '''
import kopf
import kubernetes

@kopf.on.create('example.io', 'v1', 'widgets')
def create_widget(spec, name, namespace, body, logger, **_):
    message = f"trained {spec.get('size', 1)}"
    job = {
        'apiVersion': 'batch/v1', 'kind': 'Job',
        'metadata': {'name': f'{name}-train', 'labels': {'app': 'widget-trainer'}},
        'spec': {'backoffLimit': 0, 'template': {
            'metadata': {'labels': {'widget': name}},
            'spec': {'restartPolicy': 'Never', 'containers': [{
                'name': 'trainer', 'image': 'python:3.11',
                'command': ['python', '-c'],
                'args': ["import os; print('training', os.environ['WIDGET']); "
                         "open('/dev/termination-log', 'w').write(os.environ['MESSAGE'])"],
                'env': [{'name': 'WIDGET', 'value': name}, {'name': 'MESSAGE', 'value': message}],
            }]}}},
    }
    kopf.adopt(job, owner=body)
    created = kubernetes.client.BatchV1Api().create_namespaced_job(namespace, job)
    logger.info(f'created job {created.metadata.name} uid={created.metadata.uid}')
    return {'job': created.metadata.name}
'''


@pytest.fixture(scope='module')
def widgets(k8s_api: ApiServer) -> str:
    register_custom_resource(
        k8s_api.emulator, 'example.io', 'v1', 'widgets', 'Widget', short_names=['wd'],
        printer_columns=[{'name': 'Size', 'type': 'integer', 'jsonPath': '.spec.size'},
                         {'name': 'Phase', 'type': 'string', 'jsonPath': '.status.phase'}])
    return WIDGETS


def widget(name: str, size: int = 1, labels: dict[str, str] | None = None) -> str:
    return yaml.safe_dump({'apiVersion': 'example.io/v1', 'kind': 'Widget',
                           'metadata': {'name': name, 'labels': labels or {}}, 'spec': {'size': size}})


def job_manifest(name: str, code: str, backoff_limit: int = 0, **spec: Any) -> str:
    """A batch/v1 Job running ``python -c code``; ``pod_spec`` adds pod fields, its ``container`` key
    container fields."""
    pod_spec = dict(spec.pop('pod_spec', {}))
    container = pod_spec.pop('container', {})
    return yaml.safe_dump({'apiVersion': 'batch/v1', 'kind': 'Job', 'metadata': {'name': name}, 'spec': {
        'backoffLimit': backoff_limit, **spec, 'template': {'spec': {
            'restartPolicy': 'Never', **pod_spec,
            'containers': [{'name': 'main', 'image': 'python:3.11', 'command': ['python', '-c', code],
                            **container}]}}}})


def condition(obj: dict[str, Any] | None, ctype: str, status: str = 'True') -> dict[str, Any] | None:
    """The object's condition of that type if it has that status (None otherwise)."""
    for cond in (obj or {}).get('status', {}).get('conditions') or []:
        if cond.get('type') == ctype and cond.get('status') == status:
            return cond
    return None


def terminated(pod: dict[str, Any] | None) -> dict[str, Any] | None:
    statuses = (pod or {}).get('status', {}).get('containerStatuses') or [{}]
    return statuses[0].get('state', {}).get('terminated')


# ---------------------------------------------------------------------------------------------------
# kubectl against the emulator
# ---------------------------------------------------------------------------------------------------

def test_discovery_namespaces_and_builtin_kinds(widgets, kubectl_ok, kubectl):
    resources = kubectl_ok('api-resources').stdout
    assert any(line.split()[:2] == ['widgets', 'wd'] for line in resources.splitlines())
    assert 'pods/status' not in resources
    assert kubectl_ok('get', 'pod').stdout == '' and kubectl_ok('get', 'job').stdout == ''
    namespaces = kubectl_ok('get', 'namespaces', '-o', 'name').stdout.split()
    assert 'namespace/default' in namespaces and 'namespace/kube-system' in namespaces
    missing = kubectl('get', 'widget', 'nope')
    assert missing.returncode == 1 and 'widgets.example.io "nope" not found' in missing.stderr


def test_custom_resource_lifecycle_with_kubectl(widgets, k8s_namespace, kubectl_ok, kubectl, kubectl_json, k8s_api):
    ns = k8s_namespace
    assert 'widget.example.io/w1 created' in kubectl_ok('apply', '--validate=false', '-f', '-', input=widget('w1', 3, {'tier': 'gold'}), namespace=ns).stdout
    kubectl_ok('apply', '--validate=false', '-f', '-', input=widget('w2', 5, {'tier': 'silver', 'beta': 'yes'}), namespace=ns)

    w1 = kubectl_json('get', 'wd', 'w1', namespace=ns)
    meta = w1['metadata']
    assert uuid.UUID(meta['uid']) and meta['generation'] == 1 and meta['creationTimestamp'].endswith('Z')
    listing = kubectl_json('get', 'widgets', namespace=ns)
    assert [i['metadata']['name'] for i in listing['items']] == ['w1', 'w2']

    # Table printing with the printer columns.
    table = kubectl_ok('get', 'widgets', namespace=ns).stdout.splitlines()
    assert table[0].split() == ['NAME', 'SIZE', 'PHASE', 'AGE'] and table[1].split()[:2] == ['w1', '3']

    # Selectors.
    assert kubectl_ok('get', 'wd', '-l', 'tier=gold', '-o', 'name', namespace=ns).stdout.split() == ['widget.example.io/w1']
    assert kubectl_ok('get', 'wd', '-l', 'tier,beta', '-o', 'name', namespace=ns).stdout.split() == ['widget.example.io/w2']
    assert kubectl_ok('get', 'wd', '-l', 'tier in (gold,bronze),!beta', '-o', 'name', namespace=ns).stdout.split() == ['widget.example.io/w1']
    assert kubectl_ok('get', 'wd', '--field-selector', 'metadata.name=w2', '-o', 'name', namespace=ns).stdout.split() == ['widget.example.io/w2']

    # Merge patch of the spec bumps generation; patching status does not, and vice versa.
    rv0 = int(w1['metadata']['resourceVersion'])
    kubectl_ok('patch', 'widget', 'w1', '--type=merge', '-p', '{"spec": {"size": 4}, "status": {"phase": "Hacked"}}', namespace=ns)
    kubectl_ok('patch', 'widget', 'w1', '--subresource=status', '--type=merge',
               '-p', '{"status": {"phase": "Ready"}, "spec": {"size": 99}}', namespace=ns)
    w1 = kubectl_json('get', 'wd', 'w1', namespace=ns)
    assert w1['spec']['size'] == 4 and w1['status'] == {'phase': 'Ready'}
    assert w1['metadata']['generation'] == 2 and int(w1['metadata']['resourceVersion']) > rv0
    status, listing = k8s_api.http('GET', f'/apis/example.io/v1/namespaces/{ns}/widgets')
    assert status == 200 and listing['kind'] == 'WidgetList' and listing['apiVersion'] == 'example.io/v1'
    assert int(listing['metadata']['resourceVersion']) >= int(w1['metadata']['resourceVersion'])

    # Strategic merge is refused for custom resources, as on a real server; JSON patch works.
    refused = kubectl('patch', 'widget', 'w1', '-p', '{"spec": {"size": 5}}', namespace=ns)
    assert refused.returncode != 0 and 'strategic-merge-patch' in refused.stderr
    failed_test = kubectl('patch', 'widget', 'w1', '--type=json', '-p',
                          '[{"op": "test", "path": "/spec/size", "value": 7}, {"op": "replace", "path": "/spec/size", "value": 8}]', namespace=ns)
    assert failed_test.returncode != 0 and 'request is invalid' in failed_test.stderr
    assert k8s_api.get(WIDGETS, ns, 'w1')['spec']['size'] == 4
    status, body = k8s_api.http('PATCH', f'/apis/example.io/v1/namespaces/{ns}/widgets/w1',
                                [{'op': 'test', 'path': '/spec/size', 'value': 7}], 'application/json-patch+json')
    assert status == 422 and body['reason'] == 'Invalid'

    # Replace (PUT) with optimistic concurrency.
    w1['spec']['size'] = 6
    w1['status'] = {'phase': 'IgnoredOnPut'}
    kubectl_ok('replace', '--validate=false', '-f', '-', input=json.dumps(w1), namespace=ns)
    replaced = k8s_api.get(WIDGETS, ns, 'w1')
    assert replaced['spec']['size'] == 6 and replaced['status'] == {'phase': 'Ready'}
    stale = kubectl('replace', '--validate=false', '-f', '-', input=json.dumps(w1), namespace=ns)
    assert stale.returncode != 0 and 'the object has been modified' in stale.stderr

    # Duplicate creation is a 409.
    duplicate = kubectl('create', '--validate=false', '-f', '-', input=widget('w2'), namespace=ns)
    assert duplicate.returncode != 0 and 'AlreadyExists' in duplicate.stderr

    assert 'deleted' in kubectl_ok('delete', 'widget', 'w1', namespace=ns).stdout
    assert kubectl_ok('get', 'wd', '-o', 'name', namespace=ns).stdout.split() == ['widget.example.io/w2']


def test_configmaps_and_jobs_with_kubectl(k8s_namespace, kubectl_ok, kubectl, kubectl_json, k8s_api):
    ns = k8s_namespace
    cm = {'apiVersion': 'v1', 'kind': 'ConfigMap', 'metadata': {'name': 'cfg', 'labels': {'app': 'x'}}, 'data': {'a': '1'}}
    kubectl_ok('apply', '--validate=false', '-f', '-', input=json.dumps(cm), namespace=ns)
    cm['data'] = {'a': '2', 'b': '3'}
    assert 'configured' in kubectl_ok('apply', '--validate=false', '-f', '-', input=json.dumps(cm), namespace=ns).stdout
    got = kubectl_json('get', 'configmap', 'cfg', namespace=ns)
    assert got['data'] == {'a': '2', 'b': '3'} and 'generation' not in got['metadata']
    kubectl_ok('patch', 'cm', 'cfg', '-p', '{"data": {"c": "4"}}', namespace=ns)  # strategic (built-in)
    assert k8s_api.get('v1/configmaps', ns, 'cfg')['data'] == {'a': '2', 'b': '3', 'c': '4'}
    got = kubectl_json('get', 'configmap', 'cfg', namespace=ns)
    got['data'] = {'only': 'this'}
    kubectl_ok('replace', '--validate=false', '-f', '-', input=json.dumps(got), namespace=ns)
    assert k8s_api.get('v1/configmaps', ns, 'cfg')['data'] == {'only': 'this'}
    assert kubectl_ok('get', 'cm', '-l', 'app=x', namespace=ns).stdout.split()[:4] == ['NAME', 'DATA', 'AGE', 'cfg']

    kubectl_ok('apply', '--validate=false', '-f', '-', namespace=ns,
               input=job_manifest('j1', 'print(1)', suspend=True))  # no node agent here: nothing runs
    job = kubectl_json('get', 'job', 'j1', namespace=ns)
    labels = job['spec']['template']['metadata']['labels']
    assert labels['batch.kubernetes.io/job-name'] == 'j1' and labels['controller-uid'] == job['metadata']['uid']
    assert job['spec']['template']['spec']['containers'][0]['terminationMessagePath'] == '/dev/termination-log'
    kubectl_ok('patch', 'job', 'j1', '--subresource=status', '--type=merge', '-p', '{"status": {"active": 1}}', namespace=ns)
    assert kubectl_json('get', 'job', 'j1', namespace=ns)['status'] == {'active': 1}
    job = kubectl_json('get', 'job', 'j1', namespace=ns)
    job['metadata']['labels']['stage'] = 'sft'
    job['spec']['template']['spec']['containers'][0]['image'] = 'python:3.12'  # mutable while suspended
    kubectl_ok('replace', '--validate=false', '-f', '-', input=json.dumps(job), namespace=ns)
    assert kubectl_ok('get', 'jobs', '-l', 'stage=sft', '-o', 'name', namespace=ns).stdout.split() == ['job.batch/j1']
    assert kubectl_ok('get', 'jobs', '-l', 'stage!=sft', '-o', 'name', namespace=ns).stdout == ''
    replaced = kubectl_json('get', 'job', 'j1', namespace=ns)
    assert replaced['metadata']['generation'] == 2 and replaced['status'] == {'active': 1}
    kubectl_ok('delete', 'job', 'j1', namespace=ns)
    assert kubectl_json('get', 'jobs', namespace=ns)['items'] == []

    bad = yaml.safe_load(job_manifest('j2', 'print(1)'))
    bad['spec']['template']['spec']['restartPolicy'] = 'Always'
    result = kubectl('apply', '--validate=false', '-f', '-', input=json.dumps(bad), namespace=ns)
    assert result.returncode != 0 and 'spec.template.spec.restartPolicy' in result.stderr


def test_kubectl_get_watch_streams_events(widgets, k8s_namespace, kubectl_ok, k8s_api):
    ns = k8s_namespace
    kubectl_ok('apply', '--validate=false', '-f', '-', input=widget('watched', 1), namespace=ns)
    with KubectlStream(k8s_api, 'get', 'widgets', '-w', '-o', 'name', namespace=ns) as watch:
        lines = [watch.readline()]
        kubectl_ok('patch', 'widget', 'watched', '--type=merge', '-p', '{"spec": {"size": 2}}', namespace=ns)
        lines.append(watch.readline())
        kubectl_ok('delete', 'widget', 'watched', namespace=ns)
        lines.append(watch.readline())
    assert lines == ['widget.example.io/watched'] * 3

    # A label-selected watch sees only matching objects (and objects when they start to match).
    with KubectlStream(k8s_api, 'get', 'cm', '-w', '-l', 'app=x', '--no-headers',
                       '-o', 'custom-columns=NAME:.metadata.name,DATA:.data.v', namespace=ns) as watch:
        wait_until(lambda: k8s_api.watcher_count('v1/configmaps') > 0)
        for name, labels in (('unlabelled', {}), ('labelled', {'app': 'x'})):
            kubectl_ok('apply', '--validate=false', '-f', '-', namespace=ns, input=json.dumps(
                {'apiVersion': 'v1', 'kind': 'ConfigMap', 'metadata': {'name': name, 'labels': labels}, 'data': {'v': '1'}}))
        first = watch.readline()
        kubectl_ok('label', 'cm', 'unlabelled', 'app=x', namespace=ns)
        second = watch.readline()
    assert first.split() == ['labelled', '1'] and second.split() == ['unlabelled', '1']


def test_jobs_table_watch_and_kmock_reactions(k8s_namespace, kubectl_ok, kubectl, k8s_api):
    ns = k8s_namespace
    with KubectlStream(k8s_api, 'get', 'jobs', '--watch', namespace=ns) as watch:
        wait_until(lambda: k8s_api.watcher_count('batch/v1/jobs') > 0)
        kubectl_ok('apply', '--validate=false', '-f', '-', input=job_manifest('tabled', 'print(1)', suspend=True), namespace=ns)
        header, row = watch.readline(), watch.readline()
    assert header.split() == ['NAME', 'STATUS', 'COMPLETIONS', 'DURATION', 'AGE']
    assert row.split()[:3] == ['tabled', 'Suspended', '0/1']

    # kmock's reaction DSL still works on top of the emulation, e.g. for a one-off outage.  (A kmock
    # view filters the whole request history: ``[:1]`` is the first request to that path ever.)
    path = f'/api/v1/namespaces/{ns}/configmaps'
    k8s_api.call(lambda: k8s_api.emulator['get', path][:1] << 503 << {'kind': 'Status', 'code': 503, 'message': 'injected'})
    outage = kubectl('get', 'configmaps', namespace=ns)
    assert outage.returncode != 0 and 'ServiceUnavailable' in outage.stderr
    assert kubectl_ok('get', 'configmaps', '-o', 'name', namespace=ns).stdout == ''  # served normally again


def test_crd_registration_from_manifest_and_through_the_api(k8s_namespace, kubectl_ok, kubectl_json, k8s_api):
    ns = k8s_namespace
    storage = register_crd(k8s_api.emulator, WIDGET_CRD)
    assert (storage.group, storage.version, storage.plural) == ('example.io', 'v1', 'gadgets')
    crd = kubectl_json('get', 'crd', 'gadgets.example.io')
    assert condition(crd, 'Established')
    kubectl_ok('apply', '--validate=false', '-f', '-', namespace=ns, input=yaml.safe_dump(
        {'apiVersion': 'example.io/v1alpha1', 'kind': 'Gadget', 'metadata': {'name': 'g1'}, 'spec': {'color': 'red'}}))
    assert kubectl_json('get', 'gadgets.v1.example.io', 'g1', namespace=ns)['apiVersion'] == 'example.io/v1'
    assert kubectl_ok('get', 'gd', namespace=ns).stdout.split()[:5] == ['NAME', 'COLOR', 'PHASE', 'AGE', 'g1']

    # A CRD applied through the API registers its resource type, like on a real server.
    sprocket = dict(WIDGET_CRD, metadata={'name': 'sprockets.example.io'})
    sprocket['spec'] = dict(WIDGET_CRD['spec'], names={'plural': 'sprockets', 'singular': 'sprocket', 'kind': 'Sprocket'})
    kubectl_ok('apply', '--validate=false', '-f', '-', input=yaml.safe_dump(sprocket))
    wait_until(lambda: condition(k8s_api.get('apiextensions.k8s.io/v1/customresourcedefinitions', None, 'sprockets.example.io'), 'Established'))
    kubectl_ok('apply', '--validate=false', '-f', '-', namespace=ns, input=yaml.safe_dump(
        {'apiVersion': 'example.io/v1', 'kind': 'Sprocket', 'metadata': {'name': 's1'}}))
    assert kubectl_ok('get', 'sprockets', '-o', 'name', namespace=ns).stdout.split() == ['sprocket.example.io/s1']


def test_finalizers_generate_name_and_garbage_collection(widgets, k8s_namespace, k8s_api, kubectl_ok):
    ns = k8s_namespace
    client = k8s_api.client()
    import kubernetes
    custom = kubernetes.client.CustomObjectsApi(client)
    core = kubernetes.client.CoreV1Api(client)

    owner = custom.create_namespaced_custom_object('example.io', 'v1', ns, 'widgets', {
        'apiVersion': 'example.io/v1', 'kind': 'Widget', 'metadata': {'generateName': 'gen-', 'finalizers': ['example.io/hold']},
        'spec': {'size': 1}})
    name, uid = owner['metadata']['name'], owner['metadata']['uid']
    assert name.startswith('gen-') and len(name) == len('gen-') + 5
    ref = {'apiVersion': 'example.io/v1', 'kind': 'Widget', 'name': name, 'uid': uid, 'blockOwnerDeletion': True}
    for i in range(2):
        core.create_namespaced_config_map(ns, {'metadata': {'name': f'owned-{i}', 'ownerReferences': [ref]}})
    core.create_namespaced_config_map(ns, {'metadata': {'name': 'orphan-me', 'ownerReferences': [ref]}})
    other = core.create_namespaced_config_map(ns, {'metadata': {'name': 'other-owner'}})
    core.create_namespaced_config_map(ns, {'metadata': {'name': 'shared', 'ownerReferences': [
        ref, {'apiVersion': 'v1', 'kind': 'ConfigMap', 'name': 'other-owner', 'uid': other.metadata.uid}]}})

    # Deleting with a finalizer only marks the object.
    kubectl_ok('delete', 'widget', name, '--wait=false', namespace=ns)
    marked = k8s_api.get(WIDGETS, ns, name)
    assert marked['metadata']['deletionTimestamp'] and marked['metadata']['finalizers'] == ['example.io/hold']
    # Removing the last finalizer lets it go; the GC then deletes its dependents (background).
    core.patch_namespaced_config_map('orphan-me', ns, {'metadata': {'ownerReferences': None}})
    custom.patch_namespaced_custom_object('example.io', 'v1', ns, 'widgets', name, {'metadata': {'finalizers': None}})
    k8s_api.wait_gone(WIDGETS, ns, name)
    for cm in ('owned-0', 'owned-1'):
        k8s_api.wait_gone('v1/configmaps', ns, cm)
    assert k8s_api.get('v1/configmaps', ns, 'orphan-me') is not None
    shared = k8s_api.get('v1/configmaps', ns, 'shared')  # still owned by a live object
    assert [r['name'] for r in shared['metadata']['ownerReferences']] == ['other-owner']
    # Orphan propagation keeps dependents and strips the owner reference.
    core.delete_namespaced_config_map('other-owner', ns, propagation_policy='Orphan')
    wait_until(lambda: 'ownerReferences' not in k8s_api.get('v1/configmaps', ns, 'shared')['metadata'])
    # An object created with only dangling owner references is collected, as by the real GC.
    core.create_namespaced_config_map(ns, {'metadata': {'name': 'dangling', 'ownerReferences': [dict(ref, uid=str(uuid.uuid4()))]}})
    k8s_api.wait_gone('v1/configmaps', ns, 'dangling')


# ---------------------------------------------------------------------------------------------------
# The node agent
# ---------------------------------------------------------------------------------------------------

def test_job_runs_with_env_volumes_and_termination_message(k8s_namespace, node_agent, kubectl_ok, k8s_api):
    ns = k8s_namespace
    kubectl_ok('create', 'secret', 'generic', 'creds', '--from-literal=token=s3cr3t', namespace=ns)
    kubectl_ok('create', 'configmap', 'settings', '--from-literal=MODE=fast', '--from-literal=config.json={"lr": 0.5}', namespace=ns)
    code = textwrap.dedent('''
        import json, os, sys
        cfg = json.load(open('/etc/alignops/config.json'))
        open('/scratch/out.txt', 'w').write('x')
        print('token', os.environ['TOKEN'], 'mode', os.environ['MODE'], 'lr', cfg['lr'], 'pod', os.environ['POD'])
        print('cfg path', os.environ['CFG'], file=sys.stderr)
        open('/dev/termination-log', 'w').write(json.dumps({'lr': cfg['lr'], 'greeting': os.environ['GREETING']}))
    ''')
    kubectl_ok('apply', '--validate=false', '-f', '-', namespace=ns, input=job_manifest('envjob', code, pod_spec={
        'volumes': [{'name': 'config', 'configMap': {'name': 'settings', 'items': [{'key': 'config.json', 'path': 'config.json'}]}},
                    {'name': 'scratch', 'emptyDir': {}}],
        'container': {
            'env': [{'name': 'TOKEN', 'valueFrom': {'secretKeyRef': {'name': 'creds', 'key': 'token'}}},
                    {'name': 'POD', 'valueFrom': {'fieldRef': {'fieldPath': 'metadata.name'}}},
                    {'name': 'CFG', 'value': '/etc/alignops/config.json'},
                    {'name': 'GREETING', 'value': 'hi $(MODE)'}],
            'envFrom': [{'configMapRef': {'name': 'settings'}}],
            'volumeMounts': [{'name': 'config', 'mountPath': '/etc/alignops'}, {'name': 'scratch', 'mountPath': '/scratch'}]}}))
    job = k8s_api.wait_for('batch/v1/jobs', ns, 'envjob', lambda j: condition(j, 'Complete') or condition(j, 'Failed'))
    assert condition(job, 'Complete') and job['status']['succeeded'] == 1 and job['status']['completionTime']
    [pod] = k8s_api.list('v1/pods', ns, label_selector='job-name=envjob')
    assert pod['metadata']['ownerReferences'][0]['uid'] == job['metadata']['uid']
    assert pod['metadata']['name'].startswith('envjob-') and len(pod['metadata']['name']) == len('envjob-') + 5
    state = terminated(pod)
    assert state['exitCode'] == 0 and state['reason'] == 'Completed'
    assert json.loads(state['message']) == {'lr': 0.5, 'greeting': 'hi fast'}
    run = node_agent.pods[(ns, pod['metadata']['name'])]
    logs = node_agent.logs(ns, pod['metadata']['name'])
    assert f"token s3cr3t mode fast lr 0.5 pod {pod['metadata']['name']}" in logs
    assert f"cfg path {run.dir / 'vol-config' / 'config.json'}" in logs
    assert (run.dir / 'vol-scratch' / 'out.txt').read_text() == 'x'
    assert 'token s3cr3t' in kubectl_ok('logs', pod['metadata']['name'], namespace=ns).stdout


def test_operator_in_process_creates_job_that_completes(widgets, k8s_namespace, node_agent, kopf_runner, kubectl_ok,
                                                         k8s_api, tmp_path):
    ns = k8s_namespace
    operator = tmp_path / 'operator.py'
    operator.write_text(OPERATOR)
    with kopf_runner(operator, wait_for=[WIDGETS]) as op:
        kubectl_ok('apply', '--validate=false', '-f', '-', input=widget('w1', size=7), namespace=ns)
        job = k8s_api.wait_for('batch/v1/jobs', ns, 'w1-train', lambda j: condition(j, 'Complete'), timeout=20)
        owner = k8s_api.wait_for(WIDGETS, ns, 'w1', lambda w: w.get('status', {}).get('create_widget'))
    assert op.exit_code == 0 and 'created job w1-train' in op.output
    assert owner['status']['create_widget'] == {'job': 'w1-train'}
    assert job['metadata']['ownerReferences'][0]['uid'] == owner['metadata']['uid']
    assert job['status']['succeeded'] == 1 and condition(job, 'SuccessCriteriaMet')
    [pod] = k8s_api.list('v1/pods', ns, label_selector='job-name=w1-train,widget=w1')
    assert terminated(pod) == dict(terminated(pod), exitCode=0, reason='Completed', message='trained 7')
    assert pod['status']['phase'] == 'Succeeded'
    assert 'training w1' in node_agent.logs(ns, pod['metadata']['name'])

    # Deleting the Widget cascades (background GC) to its Job and the Job's pod.
    kubectl_ok('delete', 'widget', 'w1', namespace=ns)
    k8s_api.wait_gone('batch/v1/jobs', ns, 'w1-train')
    k8s_api.wait_gone('v1/pods', ns, pod['metadata']['name'])


def test_operator_in_a_subprocess(widgets, k8s_namespace, node_agent, kopf_subprocess, kubectl_ok, k8s_api, tmp_path):
    ns = k8s_namespace
    operator = tmp_path / 'operator.py'
    operator.write_text(OPERATOR)
    with kopf_subprocess(operator, wait_for=[WIDGETS]) as op:
        kubectl_ok('apply', '--validate=false', '-f', '-', input=widget('sub', size=2), namespace=ns)
        job = k8s_api.wait_for('batch/v1/jobs', ns, 'sub-train', lambda j: condition(j, 'Complete'), timeout=20)
    assert 'created job sub-train' in op.log()
    [pod] = k8s_api.list('v1/pods', ns, label_selector='job-name=sub-train')
    assert terminated(pod)['message'] == 'trained 2' and job['status']['succeeded'] == 1


def test_deleting_a_running_job_sends_sigterm_then_sigkill(k8s_namespace, node_agent, kubectl_ok, k8s_api):
    ns = k8s_namespace
    code = textwrap.dedent('''
        import signal, time
        def on_term(*_):
            print('got SIGTERM, ignoring it', flush=True)
        signal.signal(signal.SIGTERM, on_term)
        print('started', flush=True)
        time.sleep(60)
    ''')
    kubectl_ok('apply', '--validate=false', '-f', '-', namespace=ns,
               input=job_manifest('sleeper', code, pod_spec={'terminationGracePeriodSeconds': 1}))
    wait_until(lambda: node_agent.pods_of('sleeper', ns) and 'started' in node_agent.logs(ns, node_agent.pods_of('sleeper', ns)[0].name))
    run = node_agent.pods_of('sleeper', ns)[0]
    started = time.monotonic()
    kubectl_ok('delete', 'job', 'sleeper', '--wait=false', namespace=ns)  # kubectl cascades in the background
    k8s_api.wait_gone('v1/pods', ns, run.name, timeout=15)
    assert 1.0 <= time.monotonic() - started < 30  # the grace period; the upper bound only catches a hang
    assert 'got SIGTERM' in node_agent.logs(ns, run.name)
    assert run.process.returncode == -9
    # The pod was terminating (graceful deletion) and got its final status before it went away.
    history = [v for v in k8s_api.call(lambda: list(k8s_api.emulator.objects['v1/pods', ns, run.name].history)) if v is not None]
    assert any(v['metadata'].get('deletionTimestamp') for v in history)
    final = terminated(history[-1])
    assert final['exitCode'] == 137 and final['reason'] == 'Error'


def test_job_deadline_backoff_and_orphaning_default(k8s_namespace, node_agent, kubectl_ok, k8s_api):
    ns = k8s_namespace
    kubectl_ok('apply', '--validate=false', '-f', '-', namespace=ns,
               input=job_manifest('slow', 'import time; time.sleep(60)', activeDeadlineSeconds=1))
    kubectl_ok('apply', '--validate=false', '-f', '-', namespace=ns,
               input=job_manifest('flaky', 'import sys; print("boom"); sys.exit(3)', backoff_limit=1))
    slow = k8s_api.wait_for('batch/v1/jobs', ns, 'slow', lambda j: condition(j, 'Failed'), timeout=15)
    assert condition(slow, 'Failed')['reason'] == 'DeadlineExceeded'
    flaky = k8s_api.wait_for('batch/v1/jobs', ns, 'flaky', lambda j: condition(j, 'Failed'), timeout=15)
    assert condition(flaky, 'Failed')['reason'] == 'BackoffLimitExceeded' and flaky['status']['failed'] == 2
    pods = k8s_api.list('v1/pods', ns, label_selector='job-name=flaky')
    assert len(pods) == 2 and {terminated(p)['exitCode'] for p in pods} == {3}
    wait_until(lambda: all(r.process and r.process.returncode is not None for r in node_agent.pods_of('slow', ns)))

    # The API's default for batch/v1 Jobs deleted without a propagation policy orphans the pods.
    import kubernetes
    kubernetes.client.BatchV1Api(k8s_api.client()).delete_namespaced_job('flaky', ns)
    k8s_api.wait_gone('batch/v1/jobs', ns, 'flaky')
    wait_until(lambda: all('ownerReferences' not in p['metadata'] for p in k8s_api.list('v1/pods', ns, label_selector='job-name=flaky')))
    assert len(k8s_api.list('v1/pods', ns, label_selector='job-name=flaky')) == 2


def test_fault_injection(k8s_namespace, node_agent, kubectl_ok, k8s_api):
    ns = k8s_namespace
    node_agent.faults.unschedulable(r'^gpu-')
    node_agent.faults.image_pull(r'^pull-')
    node_agent.faults.oom(r'^oom-', after=0.2)
    gpu = job_manifest('gpu-train', 'print("finally scheduled")', pod_spec={
        'container': {'resources': {'limits': {'nvidia.com/gpu': 1}}}})
    kubectl_ok('apply', '--validate=false', '-f', '-', input=gpu, namespace=ns)
    kubectl_ok('apply', '--validate=false', '-f', '-', input=job_manifest('pull-rollout', 'print(1)'), namespace=ns)
    kubectl_ok('apply', '--validate=false', '-f', '-', input=job_manifest('oom-sft', 'import time; time.sleep(30)'), namespace=ns)

    def pod_of(job: str) -> dict[str, Any] | None:
        pods = k8s_api.list('v1/pods', ns, label_selector=f'job-name={job}')
        return pods[0] if pods else None

    pending = wait_until(lambda: condition(pod_of('gpu-train'), 'PodScheduled', 'False') and pod_of('gpu-train'))
    scheduled = condition(pending, 'PodScheduled', 'False')
    assert scheduled['reason'] == 'Unschedulable' and '1 Insufficient nvidia.com/gpu' in scheduled['message']
    assert pending['status']['phase'] == 'Pending' and not pending['spec'].get('nodeName')

    def waiting_reason(job: str) -> str | None:
        statuses = (pod_of(job) or {}).get('status', {}).get('containerStatuses') or [{}]
        return statuses[0].get('state', {}).get('waiting', {}).get('reason')
    wait_until(lambda: waiting_reason('pull-rollout') == 'ImagePullBackOff')
    assert pod_of('pull-rollout')['status']['phase'] == 'Pending'

    oom = k8s_api.wait_for('batch/v1/jobs', ns, 'oom-sft', lambda j: condition(j, 'Failed'))
    assert condition(oom, 'Failed')['reason'] == 'BackoffLimitExceeded'
    state = terminated(pod_of('oom-sft'))
    assert state['exitCode'] == 137 and state['reason'] == 'OOMKilled'

    # Pending pods proceed once the faults are gone, like after a node scale-up / a registry fix.
    assert k8s_api.get('batch/v1/jobs', ns, 'gpu-train')['status']['active'] == 1
    node_agent.faults.clear()
    for job in ('gpu-train', 'pull-rollout'):
        k8s_api.wait_for('batch/v1/jobs', ns, job, lambda j: condition(j, 'Complete'))
    assert pod_of('gpu-train')['spec']['nodeName'] == node_agent.node_name
    assert 'finally scheduled' in node_agent.logs(ns, pod_of('gpu-train')['metadata']['name'])


def test_agent_stop_kills_the_process_group(k8s_namespace, k8s_api, kubectl_ok, tmp_path):
    from .node_agent import NodeAgent
    ns = k8s_namespace
    code = textwrap.dedent('''
        import subprocess, time
        child = subprocess.Popen(['sleep', '60'])
        print('child', child.pid, flush=True)
        time.sleep(60)
    ''')
    agent = NodeAgent(k8s_api, workdir=tmp_path / 'node').start()
    try:
        kubectl_ok('apply', '--validate=false', '-f', '-', namespace=ns, input=job_manifest('forever', code))
        run = wait_until(lambda: (runs := agent.pods_of('forever', ns)) and 'child' in agent.logs(ns, runs[0].name) and runs[0])
        child_pid = int(agent.logs(ns, run.name).split()[1])
        pids = [run.process.pid, child_pid]
    finally:
        agent.stop()
    assert not agent.errors
    def dead(pid: int) -> bool:  # gone, or a zombie waiting for its (init) parent
        stat = Path(f'/proc/{pid}/stat')
        return not stat.exists() or stat.read_text().rsplit(')', 1)[1].split()[0] == 'Z'
    wait_until(lambda: all(dead(pid) for pid in pids), timeout=5, message=f'processes {pids} to die')


def test_suspended_job_waits_and_missing_secret_blocks_the_pod(k8s_namespace, node_agent, kubectl_ok, k8s_api):
    ns = k8s_namespace
    kubectl_ok('apply', '--validate=false', '-f', '-', namespace=ns, input=job_manifest('later', 'print("resumed")', suspend=True))
    kubectl_ok('apply', '--validate=false', '-f', '-', namespace=ns, input=job_manifest('needs-secret', 'print("ok")', pod_spec={
        'container': {'env': [{'name': 'T', 'valueFrom': {'secretKeyRef': {'name': 'late', 'key': 't'}}}]}}))

    def waiting(job: str) -> dict[str, Any]:
        pods = k8s_api.list('v1/pods', ns, label_selector=f'job-name={job}')
        return pods and ((pods[0]['status'].get('containerStatuses') or [{}])[0].get('state') or {}).get('waiting') or {}
    wait_until(lambda: waiting('needs-secret').get('reason') == 'CreateContainerConfigError')
    assert waiting('needs-secret')['message'] == 'secret "late" not found'
    assert k8s_api.list('v1/pods', ns, label_selector='job-name=later') == []

    kubectl_ok('patch', 'job', 'later', '--type=merge', '-p', '{"spec": {"suspend": false}}', namespace=ns)
    kubectl_ok('create', 'secret', 'generic', 'late', '--from-literal=t=1', namespace=ns)
    for job in ('later', 'needs-secret'):
        k8s_api.wait_for('batch/v1/jobs', ns, job, lambda j: condition(j, 'Complete'))


def test_indexed_pods_find_each_other_by_dns_name_and_a_pod_failure_policy_fails_the_job(k8s_namespace, node_agent,
                                                                                          kubectl_ok, k8s_api):
    """Indexed pods get the hostname <job>-<index>; with a headless Service as their subdomain, index
    0's DNS name is this machine (the emulated cluster DNS) and its port takes connections. A
    podFailurePolicy FailJob rule fails the Job at once; an index-only fault keeps one pod Pending."""
    ns = k8s_namespace
    server = textwrap.dedent('''
        import os, socket
        print('host', os.environ['HOSTNAME'], 'master', os.environ['MASTER'], flush=True)
        if os.environ['JOB_COMPLETION_INDEX'] == '0':
            s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(('127.0.0.1', int(os.environ['PORT']))); s.listen(); s.accept()
        else:
            socket.create_connection((os.environ['MASTER'], int(os.environ['PORT'])), timeout=20).close()
    ''')
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        port = probe.getsockname()[1]
    env = [{'name': 'MASTER', 'value': 'pair-0.pair'}, {'name': 'PORT', 'value': str(port)}]
    kubectl_ok('apply', '--validate=false', '-f', '-', namespace=ns, input=yaml.safe_dump(
        {'apiVersion': 'v1', 'kind': 'Service', 'metadata': {'name': 'pair'},
         'spec': {'clusterIP': 'None', 'selector': {'batch.kubernetes.io/job-name': 'pair'}}}))
    kubectl_ok('apply', '--validate=false', '-f', '-', namespace=ns, input=job_manifest(
        'pair', server, completionMode='Indexed', completions=2, parallelism=2,
        pod_spec={'subdomain': 'pair', 'container': {'env': env}}))
    job = k8s_api.wait_for('batch/v1/jobs', ns, 'pair', lambda j: condition(j, 'Complete') or condition(j, 'Failed'), timeout=30)
    assert condition(job, 'Complete'), job['status']
    pods = {p['metadata']['labels']['batch.kubernetes.io/job-completion-index']: p
            for p in k8s_api.list('v1/pods', ns, label_selector='job-name=pair')}
    assert {i: p['spec']['hostname'] for i, p in pods.items()} == {'0': 'pair-0', '1': 'pair-1'}
    assert 'host pair-1 master 127.0.0.1' in node_agent.logs(ns, pods['1']['metadata']['name'])

    # exit 1 of index 1 fails the Job at once through its podFailurePolicy; index 0 never got a node
    node_agent.faults.unschedulable(r'^policy$', index=0)
    kubectl_ok('apply', '--validate=false', '-f', '-', namespace=ns, input=job_manifest(
        'policy', 'import sys; sys.exit(1)', backoff_limit=5, completionMode='Indexed', completions=2, parallelism=2,
        podFailurePolicy={'rules': [{'action': 'FailJob', 'onExitCodes': {'containerName': 'main', 'operator': 'In', 'values': [1]}}]}))
    failed = k8s_api.wait_for('batch/v1/jobs', ns, 'policy', lambda j: condition(j, 'Failed'), timeout=30)
    assert condition(failed, 'Failed')['reason'] == 'PodFailurePolicy' and failed['status']['failed'] == 1
    assert 'failed with exit code 1 matching FailJob rule' in condition(failed, 'Failed')['message']
    # the Pending index 0 was deleted with the failed Job's other pods, never run
    wait_until(lambda: not [r for r in node_agent.pods_of('policy', ns) if not r.deleted and r.index == 0])
    assert all(r.process is None for r in node_agent.pods_of('policy', ns) if r.index == 0)
