// Validates Kubernetes objects offline, as the API server's schema would: reads YAML documents (the output of
// `kubectl kustomize`) from the files named on the command line, and checks each object with the model of its
// apiVersion and kind from the npm packages kubernetes-models (the Kubernetes API's OpenAPI schema) and
// @kubernetes-models/prometheus-operator (the ServiceMonitor CRD's schema): types, required fields, enums,
// formats. Those models let unknown field names through, so each object is also walked along the models' type
// declarations and any field the schema does not name is an error (a misspelt field is the commonest mistake,
// and the API server would drop or refuse it). An object of a kind with no model is an error too.
//
//   node validate.mjs FILE...     prints one line per object; exits 1 if any object is invalid
import { readFileSync, readdirSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseAllDocuments } from "yaml";

const modules = join(dirname(fileURLToPath(import.meta.url)), "node_modules");

// Where the model of an apiVersion lives: the core group is "v1", the others "group/version".
function modelModule(apiVersion) {
  if (apiVersion.startsWith("monitoring.coreos.com/")) return `@kubernetes-models/prometheus-operator/${apiVersion}`;
  return `kubernetes-models/${apiVersion}`;
}

// The fields of every interface the packages declare, by every name it is exported under: name -> Map(field ->
// type text, or null for an inline object type, which is not walked into).
function readDeclarations() {
  const interfaces = new Map();
  const walk = (dir) => {
    for (const entry of readdirSync(dir)) {
      const path = join(dir, entry);
      if (statSync(path).isDirectory()) walk(path);
      else if (entry.endsWith(".d.ts")) readFile(path);
    }
  };
  const readFile = (path) => {
    const lines = readFileSync(path, "utf8").split("\n");
    const local = new Map();
    for (let i = 0; i < lines.length; i++) {
      const head = lines[i].match(/^export interface (\w+)(?: extends ([\w, ]+))? \{/);
      if (!head) continue;
      // An interface that extends others has their fields too (looked up by fieldsOf, below).
      const fields = new Map();
      fields.parents = head[2] ? head[2].split(",").map((p) => p.trim()) : [];
      for (i++; i < lines.length && lines[i] !== "}"; i++) {
        const field = lines[i].match(/^ {4}"([^"]+)"\??: (.*)$/);
        if (field) fields.set(field[1], field[2].endsWith(";") ? field[2].slice(0, -1) : null);
      }
      local.set(head[1], fields);
    }
    for (const [name, fields] of local) interfaces.set(name, fields);
    for (const m of readFileSync(path, "utf8").matchAll(/export type \{([^}]*)\}/g)) {
      for (const part of m[1].split(",")) {
        const [from, to] = part.trim().split(/\s+as\s+/);
        if (to && local.has(from)) interfaces.set(to, local.get(from));
      }
    }
  };
  for (const pkg of ["kubernetes-models", "@kubernetes-models/apimachinery", "@kubernetes-models/prometheus-operator"]) {
    walk(join(modules, pkg));
  }
  return interfaces;
}

// The fields of an interface and of those it extends; undefined for a type that is not a declared interface.
function fieldsOf(interfaces, type) {
  const own = interfaces.get(type);
  if (!own) return undefined;
  const all = new Map(own);
  for (const parent of own.parents) for (const [k, v] of fieldsOf(interfaces, parent) ?? []) all.set(k, v);
  return all;
}

// Every field of `value` that the declaration of `type` does not name, as paths.
function unknownFields(interfaces, type, value, path, out) {
  if (type === null || value === null || typeof value !== "object") return out;
  const array = type.match(/^Array<(\w+)>$/);
  if (array) {
    if (Array.isArray(value)) value.forEach((v, i) => unknownFields(interfaces, array[1], v, `${path}[${i}]`, out));
    return out;
  }
  const fields = fieldsOf(interfaces, type);
  if (!fields || Array.isArray(value)) return out;
  for (const [key, v] of Object.entries(value)) {
    if (!fields.has(key)) out.push(`${path}.${key}`);
    else unknownFields(interfaces, fields.get(key), v, `${path}.${key}`, out);
  }
  return out;
}

const interfaces = readDeclarations();
let objects = 0;
let failures = 0;
const fail = (where, message) => {
  failures++;
  console.log(`INVALID ${where}: ${message}`);
};
for (const file of process.argv.slice(2)) {
  for (const doc of parseAllDocuments(readFileSync(file, "utf8"))) {
    if (doc.errors.length) {
      fail(file, `not YAML: ${doc.errors[0].message}`);
      continue;
    }
    const object = doc.toJS();
    if (object === null) continue;
    objects++;
    const where = `${file}: ${object.kind}/${object.metadata?.name}`;
    let model;
    try {
      model = (await import(modelModule(String(object.apiVersion))))[object.kind];
    } catch {
      model = undefined;
    }
    if (!model) {
      fail(where, `no schema for apiVersion ${object.apiVersion} kind ${object.kind}`);
      continue;
    }
    try {
      new model(object).validate();
    } catch (e) {
      fail(where, e.message);
      continue;
    }
    const unknown = unknownFields(interfaces, `I${object.kind}`, object, "", []);
    if (unknown.length) {
      fail(where, `fields the schema does not have: ${unknown.join(", ")}`);
      continue;
    }
    console.log(`valid ${where}`);
  }
}
console.log(`${objects} objects, ${failures} invalid`);
process.exit(failures || objects === 0 ? 1 : 0);
