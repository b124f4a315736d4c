// Validates KEDA objects (ScaledObject, ScaledJob, TriggerAuthentication,
// ClusterTriggerAuthentication) against KEDA's CRD schema, as shipped by the npm package
// @kubernetes-models/keda, plus two checks that schema leaves out. Run by deploy/manifests.sh:
//
//   node deploy/k8s/validate-keda.mjs MODULES_DIR FILE.json     # FILE: a JSON array of objects
//   node deploy/k8s/validate-keda.mjs MODULES_DIR --self-test FILE.json
//
// MODULES_DIR is the node_modules folder holding @kubernetes-models/keda. Each object gets:
//   1. the package's validate(): types, required fields, enums (the CRD's OpenAPI schema);
//   2. unknown fields: the CRD schema lets unknown properties through (a misspelled
//      `minReplicaCont` passes 1), so every key is looked up in the package's TypeScript
//      declarations (*.d.ts, generated from the same Go types), nested objects included (the
//      Kubernetes types of jobTargetRef and the HPA behavior too);
//   3. rabbitmq and metrics-api triggers: their `metadata` is a free string map in the CRD, so
//      its keys are checked against the scaler's parameters, the required ones must be there, and
//      enumerated or numeric values are checked; a trigger's authenticationRef must name a
//      (Cluster)TriggerAuthentication of the same file that gives the parameters its auth mode
//      needs (metrics-api bearer: `token`; rabbitmq: `host` unless the trigger has one);
//   4. fallback: only a behavior that never goes below the current replica count (refit's
//      workers may be training: see deploy/k8s/overlays/cpu/scaledobject.yaml), replicas not 0.
// --self-test breaks copies of the given objects in ways each check must catch (a wrong type, a
// misspelled field, a misspelled trigger parameter, a missing url, …) and fails unless every one
// is rejected: the validator is proven live, not silently accepting everything.
// Prints one line per object (or per broken copy) and exits 1 on any failure.

import { readFileSync, existsSync } from "node:fs";
import { join, dirname, basename } from "node:path";
import { pathToFileURL } from "node:url";

const [modules, ...rest] = process.argv.slice(2);
const selfTest = rest[0] === "--self-test";
const file = selfTest ? rest[1] : rest[0];
if (!modules || !file) {
  console.error("usage: validate-keda.mjs MODULES_DIR [--self-test] FILE.json");
  process.exit(2);
}
const kedaDir = join(modules, "@kubernetes-models/keda/keda.sh/v1alpha1");
const KINDS = ["ScaledObject", "ScaledJob", "TriggerAuthentication", "ClusterTriggerAuthentication"];

// --- 1. the package's schema validation -----------------------------------------------------
const classes = {};
for (const kind of KINDS) {
  classes[kind] = (await import(pathToFileURL(join(kedaDir, `${kind}.js`)).href))[kind];
}

// --- 2. unknown fields, from the .d.ts declarations -----------------------------------------
const declCache = new Map();

// Parses a .d.ts file: its imports (name -> file) and its main interface's members (name -> type).
function declarations(path) {
  if (declCache.has(path)) return declCache.get(path);
  const text = readFileSync(path, "utf8").replace(/\/\*[\s\S]*?\*\//g, "").replace(/^\s*\/\/.*$/gm, "");
  const imports = {};
  for (const m of text.matchAll(/import\s*\{([^}]*)\}\s*from\s*"([^"]+)"/g)) {
    const target = resolveModule(m[2], dirname(path));
    for (const name of m[1].split(",").map((s) => s.trim()).filter(Boolean)) {
      imports[name.split(/\s+as\s+/).pop()] = target;
    }
  }
  const want = `I${basename(path, ".d.ts")}`;
  let members = null;
  for (const m of text.matchAll(/export interface (\w+)[^{]*\{/g)) {
    if (members && m[1] !== want) continue;
    members = parseMembers(text, m.index + m[0].length);
    if (m[1] === want) break;
  }
  let decl = { imports, members };
  if (!members) {
    // `export type IName = IOther;`: the declarations of IOther; anything else is not checked.
    const alias = text.match(new RegExp(`export type ${want}\\s*=\\s*(\\w+)\\s*;`));
    decl = alias && imports[alias[1]] ? declarations(imports[alias[1]]) : { imports, members: null };
  }
  declCache.set(path, decl);
  return decl;
}

function resolveModule(spec, from) {
  let path = spec.startsWith(".") ? join(from, spec) : join(modules, spec);
  path = path.replace(/\.js$/, "");
  return existsSync(`${path}.d.ts`) ? `${path}.d.ts` : null;
}

// Splits an interface body at top-level `;` into `"name"?: type` members.
function parseMembers(text, start) {
  const members = {};
  let depth = 0;
  let current = "";
  for (let i = start; i < text.length; i++) {
    const c = text[i];
    if (depth === 0 && c === "}") break;
    if (c === "{" || c === "<" || c === "(" || c === "[") depth++;
    if (c === "}" || c === ">" || c === ")" || c === "]") depth--;
    if (depth === 0 && c === ";") {
      const m = current.match(/^\s*"?([^"?:\s]+)"?\??\s*:\s*([\s\S]+)$/);
      if (m) members[m[1]] = m[2].trim();
      current = "";
    } else {
      current += c;
    }
  }
  return members;
}

// Reports every key of `value` that its declared type does not have.
function unknownFields(value, type, decl, path, errors) {
  if (value === null || typeof value !== "object" || !type) return;
  type = type.trim();
  const array = type.match(/^Array<([\s\S]+)>$/);
  if (array) {
    if (Array.isArray(value)) value.forEach((v, i) => unknownFields(v, array[1], decl, `${path}[${i}]`, errors));
    return;
  }
  const map = type.match(/^\{\s*\[key: string\]:\s*([\s\S]+?);?\s*\}$/);
  if (map) {
    for (const [k, v] of Object.entries(value)) unknownFields(v, map[1], decl, `${path}.${k}`, errors);
    return;
  }
  const named = type.split("|").map((s) => s.trim()).filter((s) => /^\w+$/.test(s) && s in decl.imports);
  if (named.length !== 1 || !decl.imports[named[0]]) return; // a scalar, a literal, or not resolvable
  const inner = declarations(decl.imports[named[0]]);
  if (!inner.members) return; // a type this parser does not follow
  for (const [k, v] of Object.entries(value)) {
    if (!(k in inner.members)) errors.push(`${path}.${k}: unknown field`);
    else unknownFields(v, inner.members[k], inner, `${path}.${k}`, errors);
  }
}

// --- 3. trigger parameters and their authentication -----------------------------------------
const SCALERS = {
  rabbitmq: {
    params: new Set([
      "host", "hostFromEnv", "usernameFromEnv", "passwordFromEnv", "protocol", "mode", "value",
      "activationValue", "queueName", "vhostName", "useRegex", "excludeUnacknowledged", "pageSize",
      "operation", "timeout", "unsafeSsl", "queueLength", "metricName",
    ]),
    required: ["queueName"],
    values: {
      protocol: ["auto", "http", "amqp"],
      mode: ["QueueLength", "MessageRate"],
      operation: ["sum", "max", "avg"],
      useRegex: ["true", "false"],
      excludeUnacknowledged: ["true", "false"],
      unsafeSsl: ["true", "false"],
    },
    numbers: ["value", "activationValue", "pageSize", "timeout"],
  },
  // KEDA 2.x docs (scalers/metrics-api): the trigger's parameters. The credentials (token,
  // apiKey, username, password, ca, cert, key) belong in a TriggerAuthentication, not here.
  "metrics-api": {
    params: new Set([
      "url", "format", "valueLocation", "targetValue", "activationTargetValue", "unsafeSsl",
      "authMode", "method", "keyParamName",
    ]),
    credentials: new Set(["token", "apiKey", "username", "password", "ca", "cert", "key"]),
    required: ["url", "valueLocation", "targetValue"],
    values: {
      format: ["json", "xml", "yaml", "prometheus"],
      method: ["header", "query"],
      unsafeSsl: ["true", "false"],
    },
    numbers: ["targetValue", "activationTargetValue"],
  },
};
// What each metrics-api auth mode needs from the TriggerAuthentication (KEDA docs).
const METRICS_API_AUTH = { bearer: ["token"], apiKey: ["apiKey"], basic: ["username"], tls: ["ca", "cert"] };

// The parameters a (Cluster)TriggerAuthentication gives its triggers, or null if it is not in `all`.
function authParameters(ref, obj, all) {
  const kind = ref.kind ?? "TriggerAuthentication";
  const ns = obj.metadata?.namespace;
  const auth = all.find((o) => o.kind === kind && o.metadata?.name === ref.name &&
    (kind === "ClusterTriggerAuthentication" || o.metadata?.namespace === ns));
  if (!auth) return null;
  const spec = auth.spec ?? {};
  const params = new Set();
  for (const list of [spec.secretTargetRef, spec.configMapTargetRef, spec.env]) {
    for (const p of list ?? []) params.add(p.parameter);
  }
  for (const vault of [spec.hashiCorpVault, spec.azureKeyVault, spec.awsSecretManager, spec.gcpSecretManager]) {
    for (const p of vault?.secrets ?? []) params.add(p.parameter);
  }
  return params;
}

function triggerErrors(obj, all) {
  const errors = [];
  (obj.spec?.triggers ?? []).forEach((t, i) => {
    const scaler = SCALERS[t.type];
    if (!scaler) return;
    const where = `spec.triggers[${i}].metadata`;
    const md = t.metadata ?? {};
    for (const [k, v] of Object.entries(md)) {
      if (scaler.credentials?.has(k)) {
        errors.push(`${where}.${k}: a credential, give it in the TriggerAuthentication (authenticationRef)`);
      } else if (!scaler.params.has(k)) {
        errors.push(`${where}.${k}: not a ${t.type} scaler parameter`);
      } else if (typeof v !== "string") {
        errors.push(`${where}.${k}: must be a string (quote it)`);
      } else if (scaler.values[k] && !scaler.values[k].includes(v)) {
        errors.push(`${where}.${k}: ${JSON.stringify(v)} is not one of ${scaler.values[k].join(", ")}`);
      } else if (scaler.numbers.includes(k) && !/^\s*[0-9]+(\.[0-9]+)?\s*$/.test(v)) {
        errors.push(`${where}.${k}: ${JSON.stringify(v)} is not a number`);
      }
    }
    for (const k of scaler.required) if (!md[k]) errors.push(`${where}.${k}: missing`);
    const auth = t.authenticationRef ? authParameters(t.authenticationRef, obj, all) : new Set();
    if (auth === null) {
      const kind = t.authenticationRef.kind ?? "TriggerAuthentication";
      errors.push(`spec.triggers[${i}].authenticationRef: no ${kind} ${t.authenticationRef.name} in this build`);
    }
    if (t.type === "rabbitmq") {
      if (md.useRegex === "true" && md.protocol !== "http") errors.push(`${where}: useRegex needs protocol http`);
      if (!md.host && !md.hostFromEnv && auth && !auth.has("host")) {
        errors.push(`${where}: no host (nor a TriggerAuthentication giving parameter host)`);
      }
    }
    if (t.type === "metrics-api") {
      if (md.url && !/^https?:\/\/[^/\s]+(\/\S*)?$/.test(md.url)) errors.push(`${where}.url: not an http(s) URL`);
      for (const mode of (md.authMode ?? "").split(",").map((m) => m.trim()).filter(Boolean)) {
        const needs = METRICS_API_AUTH[mode];
        if (!needs) {
          errors.push(`${where}.authMode: ${JSON.stringify(mode)} is not one of ${Object.keys(METRICS_API_AUTH).join(", ")}`);
        } else if (!t.authenticationRef) {
          errors.push(`${where}.authMode: ${mode} needs an authenticationRef`);
        } else if (auth) {
          for (const p of needs.filter((p) => !auth.has(p))) {
            errors.push(`${where}.authMode: ${mode} needs parameter ${p} from ${t.authenticationRef.kind ?? "TriggerAuthentication"} ${t.authenticationRef.name}`);
          }
        }
      }
    }
  });
  return errors;
}

// --- 4. fallback ------------------------------------------------------------------------------
// A `static` fallback (the default) or `currentReplicasIfLower` sets a failing trigger's count to
// fallback.replicas, below the workers that are training; replicas 0 lets KEDA scale an inactive
// ScaledObject with a failing trigger to zero.
function fallbackErrors(obj) {
  const fb = obj.spec?.fallback;
  if (obj.kind !== "ScaledObject" || !fb) return [];
  const errors = [];
  if (!["currentReplicas", "currentReplicasIfHigher"].includes(fb.behavior)) {
    errors.push(`spec.fallback.behavior: ${JSON.stringify(fb.behavior ?? "static")} can scale busy workers down; use currentReplicas or currentReplicasIfHigher`);
  }
  if (fb.replicas === 0) errors.push("spec.fallback.replicas: 0 lets KEDA scale a failing, inactive pool to zero");
  return errors;
}

// --- all four -------------------------------------------------------------------------------
function check(obj, all) {
  const errors = [];
  const Cls = classes[obj.kind];
  if (!Cls) return [`kind ${obj.kind} is not a KEDA kind this checks`];
  try {
    new Cls(obj).validate();
  } catch (e) {
    errors.push(`schema: ${e.message}`);
  }
  const top = declarations(join(kedaDir, `${obj.kind}.d.ts`));
  for (const [k, v] of Object.entries(obj)) {
    if (!(k in top.members)) errors.push(`${k}: unknown field`);
    else unknownFields(v, top.members[k], top, k, errors);
  }
  errors.push(...triggerErrors(obj, all), ...fallbackErrors(obj));
  return errors;
}

const objects = JSON.parse(readFileSync(file, "utf8"));
let failed = 0;
const name = (o) => `${o.kind}/${o.metadata?.name ?? "?"}`;

if (!selfTest) {
  for (const obj of objects) {
    const errors = check(obj, objects);
    if (errors.length) {
      failed++;
      console.log(`FAIL ${name(obj)}`);
      for (const e of errors) console.log(`       ${e}`);
    } else {
      console.log(`ok   ${name(obj)}`);
    }
  }
} else {
  // Each breakage must make check() fail, on a copy of a real object that passes. breakIt gets
  // the copy, its trigger of the given type (if any), and a copy of all objects (to break a
  // TriggerAuthentication the copy uses).
  const clone = (o) => JSON.parse(JSON.stringify(o));
  const trigger = (type) => (o) => (o.spec.triggers ?? []).find((t) => t.type === type);
  const rabbit = trigger("rabbitmq");
  const api = trigger("metrics-api");
  const breakages = [
    ["ScaledObject", "minReplicaCount as a string", null, (o) => { o.spec.minReplicaCount = String(o.spec.minReplicaCount ?? 0); }],
    ["ScaledObject", "misspelled spec.minReplicaCont", null, (o) => { o.spec.minReplicaCont = 1; }],
    ["ScaledObject", "HPA behavior one level too high", null, (o) => { o.spec.advanced = { behavior: {} }; }],
    ["ScaledObject", "misspelled rabbitmq parameter queueNmae", rabbit, (o, t) => { t.metadata.queueNmae = "x"; }],
    ["ScaledObject", "rabbitmq value as a number", rabbit, (o, t) => { t.metadata.value = 1; }],
    ["ScaledObject", "rabbitmq protocol amqp with useRegex", rabbit, (o, t) => { t.metadata.protocol = "amqp"; }],
    ["ScaledObject", "misspelled metrics-api parameter valueLocaton", api, (o, t) => {
      t.metadata.valueLocaton = t.metadata.valueLocation; delete t.metadata.valueLocation; }],
    ["ScaledObject", "metrics-api without url", api, (o, t) => { delete t.metadata.url; }],
    ["ScaledObject", "metrics-api without targetValue", api, (o, t) => { delete t.metadata.targetValue; }],
    ["ScaledObject", "metrics-api targetValue not a number", api, (o, t) => { t.metadata.targetValue = "one"; }],
    ["ScaledObject", "metrics-api format jsn", api, (o, t) => { t.metadata.format = "jsn"; }],
    ["ScaledObject", "metrics-api authMode Bearer (case)", api, (o, t) => { t.metadata.authMode = "Bearer"; }],
    ["ScaledObject", "metrics-api bearer without authenticationRef", api, (o, t) => { delete t.authenticationRef; }],
    ["ScaledObject", "metrics-api token in the trigger's metadata", api, (o, t) => { t.metadata.token = "x"; }],
    ["ScaledObject", "metrics-api authenticationRef to a missing TriggerAuthentication", api, (o, t) => {
      t.authenticationRef.name += "-missing"; }],
    ["ScaledObject", "bearer TriggerAuthentication without parameter token", api, (o, t, all) => {
      const ta = all.find((a) => a.kind === "TriggerAuthentication" && a.metadata?.name === t.authenticationRef.name);
      for (const ref of ta.spec.secretTargetRef ?? []) if (ref.parameter === "token") ref.parameter = "tokne"; }],
    ["ScaledObject", "fallback behavior static", (o) => o.spec.fallback, (o) => { o.spec.fallback.behavior = "static"; }],
    ["ScaledObject", "fallback without behavior (static)", (o) => o.spec.fallback, (o) => { delete o.spec.fallback.behavior; }],
    ["ScaledJob", "misspelled field in the Job's pod spec", null, (o) => { o.spec.jobTargetRef.template.spec.restartPolicyy = "Never"; }],
    ["ScaledJob", "unknown scaling strategy field", null, (o) => { o.spec.scalingStrategy.stratgy = "accurate"; }],
    ["TriggerAuthentication", "secretTargetRef without key", null, (o) => { delete o.spec.secretTargetRef[0].key; }],
  ];
  for (const [kind, what, needs, breakIt] of breakages) {
    const sample = objects.find((o) => o.kind === kind && (!needs || needs(o)));
    if (!sample) {
      failed++;
      console.log(`FAIL self-test: no ${kind} to break (${what})`);
      continue;
    }
    if (check(sample, objects).length) {
      failed++;
      console.log(`FAIL self-test: the unbroken ${name(sample)} does not pass`);
      continue;
    }
    const all = clone(objects);
    const broken = clone(sample);
    breakIt(broken, needs ? needs(broken) : undefined, all);
    const errors = check(broken, all);
    if (errors.length) console.log(`ok   rejected ${kind} with ${what}: ${errors[0]}`);
    else {
      failed++;
      console.log(`FAIL self-test: ${kind} with ${what} was accepted`);
    }
  }
}
process.exit(failed ? 1 : 0);
