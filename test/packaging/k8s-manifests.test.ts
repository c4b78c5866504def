// deploy/k8s: every object validates against the Kubernetes OpenAPI schemas (kubernetes-models), the
// kustomization lists every file, and the objects agree with each other and with the gateway: the config in
// the ConfigMap passes `sluice validate`, every $ENV:// it reads is a Secret key, probes hit the admin port,
// the grace period covers preStop + the configured drain, selectors and named ports match.
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { parse, parseAllDocuments } from 'yaml';
import { ConfigMap } from 'kubernetes-models/v1/ConfigMap';
import { Secret } from 'kubernetes-models/v1/Secret';
import { Service } from 'kubernetes-models/v1/Service';
import { Deployment } from 'kubernetes-models/apps/v1/Deployment';
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1/PodDisruptionBudget';
import { createRequire } from 'node:module';
import ts from 'typescript';
import { validateConfig } from '../../src/config/validate.ts';

const dir = fileURLToPath(new URL('../../deploy/k8s', import.meta.url));
const MODELS: Record<string, new (data: any) => { validate(): void }> = {
  'v1/ConfigMap': ConfigMap,
  'v1/Secret': Secret,
  'v1/Service': Service,
  'apps/v1/Deployment': Deployment,
  'policy/v1/PodDisruptionBudget': PodDisruptionBudget,
};

interface Obj { apiVersion: string; kind: string; metadata: { name: string; labels?: Record<string, string> }; [k: string]: any }

function load(): { file: string; obj: Obj }[] {
  const out: { file: string; obj: Obj }[] = [];
  for (const file of readdirSync(dir).filter((f) => f.endsWith('.yaml') && f !== 'kustomization.yaml').sort()) {
    for (const doc of parseAllDocuments(readFileSync(join(dir, file), 'utf8'))) {
      assert.deepEqual(doc.errors, [], `${file} parses`);
      out.push({ file, obj: doc.toJS() as Obj });
    }
  }
  return out;
}

const objects = load();
const one = (kind: string): Obj => {
  const found = objects.filter((o) => o.obj.kind === kind);
  assert.equal(found.length, 1, `exactly one ${kind}`);
  return found[0]!.obj;
};

test('every manifest validates against the Kubernetes schema of its kind', () => {
  assert.ok(objects.length >= 5);
  for (const { file, obj } of objects) {
    const Model = MODELS[`${obj.apiVersion}/${obj.kind}`];
    assert.ok(Model, `${file}: ${obj.apiVersion} ${obj.kind} is one of the kinds shipped`);
    assert.doesNotThrow(() => new Model(obj).validate(), `${file} (${obj.kind} ${obj.metadata?.name})`);
  }
});

// The OpenAPI schemas allow unknown fields (the API server drops them, or rejects them under strict field
// validation), so a misspelt key such as `terminationGracePeriodSecond` would pass them silently. The field
// names are checked against the models' TypeScript declarations instead.
function unknownFields(objs: readonly Obj[]): string[] {
  const require = createRequire(import.meta.url);
  const dts = (kind: string) => require.resolve(`kubernetes-models/${kind}`).replace(/\.js$/, '.d.ts');
  // The MODELS keys ('apps/v1/Deployment') are also the packages' module paths.
  const paths: Record<string, string> = Object.fromEntries(Object.keys(MODELS).map((key) => [key, dts(key)]));
  const program = ts.createProgram(Object.values(paths), { noEmit: true, skipLibCheck: true, types: [] });
  const checker = program.getTypeChecker();
  const walk = (value: unknown, type: ts.Type, path: string, out: string[]): void => {
    type = checker.getNonNullableType(type);
    if (Array.isArray(value)) {
      if (checker.isArrayType(type)) for (const [i, v] of value.entries()) walk(v, checker.getTypeArguments(type as ts.TypeReference)[0]!, `${path}[${i}]`, out);
      return;
    }
    if (value === null || typeof value !== 'object' || type.isUnion()) return;
    const index = checker.getIndexInfoOfType(type, ts.IndexKind.String);
    for (const [k, v] of Object.entries(value)) {
      const prop = checker.getPropertyOfType(type, k);
      if (prop) walk(v, checker.getTypeOfSymbol(prop), `${path}.${k}`, out);
      else if (index) walk(v, index.type, `${path}.${k}`, out);
      else out.push(`${path}.${k}`);
    }
  };
  const out: string[] = [];
  for (const obj of objs) {
    const key = `${obj.apiVersion}/${obj.kind}`;
    const sf = program.getSourceFile(paths[key]!)!;
    const sym = checker.getExportsOfModule(checker.getSymbolAtLocation(sf)!).find((s) => s.name === `I${obj.kind}`)!;
    walk(obj, checker.getDeclaredTypeOfSymbol(sym), `${obj.kind}/${obj.metadata.name}`, out);
  }
  return out;
}

test('no manifest has a field its kind does not define (misspellings pass the schemas)', () => {
  const broken = structuredClone(one('Deployment'));
  broken.spec.template.spec.terminationGracePeriodSecond = 60;
  broken.spec.template.spec.containers[0].ports[0].nam = 'x';
  assert.deepEqual(unknownFields([...objects.map((o) => o.obj), broken]), [
    'Deployment/sluice.spec.template.spec.containers[0].ports[0].nam',
    'Deployment/sluice.spec.template.spec.terminationGracePeriodSecond',
  ]);
});

test('the schema check catches a broken manifest (the validator is live)', () => {
  const d = structuredClone(one('Deployment'));
  d.spec.template.spec.containers[0].readinessProbe.httpGet.port = undefined;
  d.spec.replicas = 'two';
  assert.throws(() => new Deployment(d).validate(), /replicas must be integer|must have required property 'port'/);
});

test('kustomization.yaml lists every manifest', () => {
  const k = parse(readFileSync(join(dir, 'kustomization.yaml'), 'utf8')) as { resources: string[] };
  assert.deepEqual([...k.resources].sort(), [...new Set(objects.map((o) => o.file))].sort());
});

test('the ConfigMap config passes sluice validation, and every $ENV:// it reads is a Secret key', () => {
  const cm = one('ConfigMap');
  const secret = one('Secret');
  const text: string = cm.data['sluice.yaml'];
  const refs = [...text.matchAll(/\$ENV:\/\/([A-Za-z_][A-Za-z0-9_]*)/g)].map((m) => m[1]!);
  assert.ok(refs.length > 0);
  const keys = Object.keys({ ...secret.stringData, ...secret.data });
  for (const r of refs) assert.ok(keys.includes(r), `Secret has ${r}`);
  const env = Object.fromEntries(keys.map((k) => [k, 'x']));
  const config = validateConfig(parse(text), env);
  assert.equal(config.listen.host, '0.0.0.0', 'listens on the pod IP');
  assert.equal(config.admin.host, '0.0.0.0', 'the kubelet reaches the admin port');

  const d = one('Deployment');
  const spec = d.spec.template.spec;
  const c = spec.containers[0];
  const ports = Object.fromEntries(c.ports.map((p: { name: string; containerPort: number }) => [p.name, p.containerPort]));
  assert.equal(ports.http, config.listen.port);
  assert.equal(ports.admin, config.admin.port);
  for (const probe of ['startupProbe', 'livenessProbe', 'readinessProbe']) assert.equal(c[probe].httpGet.port, 'admin', probe);
  assert.equal(c.readinessProbe.httpGet.path, '/readyz');
  assert.equal(c.livenessProbe.httpGet.path, '/healthz');
  const mount = c.volumeMounts.find((m: { name: string }) => m.name === 'config');
  assert.equal(`${mount.mountPath}/sluice.yaml`, c.args[c.args.indexOf('--config') + 1]);
  assert.equal(spec.volumes.find((v: { name: string }) => v.name === 'config').configMap.name, cm.metadata.name);
  assert.equal(c.envFrom[0].secretRef.name, secret.metadata.name);

  // Drain: preStop sleep + shutdown.drain_timeout_ms + flush must fit in the grace period, with margin.
  const preStopS = Number(c.lifecycle.preStop.exec.command[1]);
  const drainS = config.shutdown.drain_timeout_ms / 1000;
  assert.ok(spec.terminationGracePeriodSeconds >= preStopS + drainS + 10,
    `terminationGracePeriodSeconds ${spec.terminationGracePeriodSeconds} >= preStop ${preStopS} + drain ${drainS} + 10`);
});

test('selectors, named ports, resources, PDB and scrape annotations agree', () => {
  const d = one('Deployment');
  const svc = one('Service');
  const pdb = one('PodDisruptionBudget');
  const labels = d.spec.template.metadata.labels;
  const matches = (sel: Record<string, string>) => Object.entries(sel).every(([k, v]) => labels[k] === v);
  assert.ok(matches(d.spec.selector.matchLabels));
  assert.ok(matches(svc.spec.selector));
  assert.ok(matches(pdb.spec.selector.matchLabels));
  const c = d.spec.template.spec.containers[0];
  const named = new Set(c.ports.map((p: { name: string }) => p.name));
  for (const p of svc.spec.ports) assert.ok(named.has(p.targetPort), `service port ${p.name} targets a container port`);
  assert.ok(c.resources.requests.cpu && c.resources.requests.memory, 'resource requests');
  assert.ok(d.spec.replicas >= 2 && (pdb.spec.maxUnavailable === 1 || pdb.spec.minAvailable >= 1));
  const ann = d.spec.template.metadata.annotations;
  assert.equal(ann['prometheus.io/scrape'], 'true');
  assert.equal(Number(ann['prometheus.io/port']), c.ports.find((p: { name: string }) => p.name === 'admin').containerPort);
  assert.equal(ann['prometheus.io/path'], '/metrics');
  assert.equal(d.spec.template.spec.securityContext.runAsNonRoot, true);
});
