// Prints the YAML documents of the files named on the command line as one JSON array of objects, for checks
// written in a language without a YAML parser of its own (tests/integration/k8s_manifests_test.py).
import { readFileSync } from "node:fs";
import { parseAllDocuments } from "yaml";

const objects = [];
for (const file of process.argv.slice(2)) {
  for (const doc of parseAllDocuments(readFileSync(file, "utf8"))) {
    if (doc.errors.length) throw new Error(`${file}: ${doc.errors[0].message}`);
    const object = doc.toJS();
    if (object !== null) objects.push(object);
  }
}
process.stdout.write(JSON.stringify(objects));
