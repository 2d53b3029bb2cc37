#!/usr/bin/env python3
"""deploy/k8s rendered and checked offline, as a platform engineer would apply it.

Every overlay is rendered with Debian 12's kubectl (kubernetes-client, 1.20: the oldest kustomize the manifests
promise to work with) and every object is validated against the Kubernetes API's schema (and the
ServiceMonitor CRD's) by tests/integration/k8s-validate (npm: kubernetes-models, types, required fields, enums
and unknown field names). Then what the schema cannot know:
- the pods' security: no service account token, non-root as the image's uid, read-only root, no capabilities,
  resources;
- the proxy's probes on its admin port, its preStop and a grace period above preStop plus the drain timeout;
- the headless Services that slotshift move --proxy-dns names, the PodDisruptionBudgets and the ServiceMonitor
  select what they should;
- every file under /etc/slotshift/secrets that a setting or flag names is a key of the Secret;
- the binaries of this build accept what the manifests give them: slotshift-proxy loads each ConfigMap's
  proxy.json with the container's arguments (stopped just after its checks by an invalid --max-pipeline), and
  slotshift runs the Job's arguments up to its first connection;
- the validator itself refuses a manifest with a wrong type and one with a misspelt field.
"""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import unittest

SOURCE_DIR = os.environ.get("SLOTSHIFT_SOURCE_DIR",
                            os.path.abspath(os.path.join(os.path.dirname(__file__), "../..")))
BINARY_DIR = os.environ.get("SLOTSHIFT_BINARY_DIR", os.path.join(SOURCE_DIR, "build"))
K8S_DIR = os.path.join(SOURCE_DIR, "deploy", "k8s")
VALIDATOR_DIR = os.path.join(SOURCE_DIR, "tests", "integration", "k8s-validate")
PROXY_BIN = os.path.join(BINARY_DIR, "proxy", "slotshift-proxy")
SLOTSHIFT_BIN = os.path.join(BINARY_DIR, "orchestrator", "slotshift")
SECRETS_DIR = "/etc/slotshift/secrets"
# The proxy's drain on SIGTERM lasts at most --drain-timeout-ms, 5000 unless proxy.json says otherwise.
DEFAULT_DRAIN_MS = 5000
# Where deploy/local/install-deps.sh unpacks Debian's kubectl when /usr/bin/kubectl belongs to another package.
UNPACKED_KUBECTL = "/var/cache/slotshift/kubernetes-client/usr/bin/kubectl"


def debian_kubectl():
    """Debian 12's kubectl (package kubernetes-client), never another one on PATH: the manifests must render
    with its kustomize."""
    owner = subprocess.run(["dpkg-query", "-S", "/usr/bin/kubectl"], capture_output=True, text=True).stdout
    if owner.startswith("kubernetes-client:"):
        return "/usr/bin/kubectl"
    if os.access(UNPACKED_KUBECTL, os.X_OK):
        return UNPACKED_KUBECTL
    raise RuntimeError("Debian's kubectl (kubernetes-client) is missing: run deploy/local/install-deps.sh")


def image_uid():
    with open(os.path.join(SOURCE_DIR, "deploy", "image", "build.sh")) as f:
        return int(re.search(r"^uid=(\d+)$", f.read(), re.M).group(1))


def node(script, *args):
    return subprocess.run(["node", os.path.join(VALIDATOR_DIR, script), *args], capture_output=True, text=True)


class Rendered:
    """One overlay, rendered: its YAML file and its objects."""

    def __init__(self, name, path, objects):
        self.name, self.path, self.objects = name, path, objects

    def of_kind(self, kind):
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind, name):
        found = [o for o in self.objects if o["kind"] == kind and o["metadata"]["name"] == name]
        assert len(found) == 1, "%s: expected one %s/%s, found %d" % (self.name, kind, name, len(found))
        return found[0]


def pod_specs(rendered):
    """(owner name, pod spec) of every workload."""
    return [(o["metadata"]["name"], o["spec"]["template"]["spec"])
            for o in rendered.objects if o["kind"] in ("Deployment", "Job")]


def slotshift_containers(spec):
    """The containers that run the slotshift image (the proxy, a sidecar proxy, slotshift)."""
    return [c for c in spec.get("containers", []) + spec.get("initContainers", [])
            if c["image"].split(":")[0].endswith("/slotshift")]


def is_proxy(container):
    return not container.get("command") or container["command"][0] == "slotshift-proxy"


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


class K8sManifestsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="slotshift-k8s-")
        cls.kubectl = debian_kubectl()
        cls.overlays = {}
        overlays = os.path.join(K8S_DIR, "overlays")
        for name in sorted(os.listdir(overlays)):
            out = subprocess.run([cls.kubectl, "kustomize", os.path.join(overlays, name)], capture_output=True,
                                 text=True)
            if out.returncode != 0:
                raise AssertionError("kubectl kustomize %s: %s" % (name, out.stderr))
            path = os.path.join(cls.tmp, name + ".yaml")
            with open(path, "w") as f:
                f.write(out.stdout)
            converted = node("to-json.mjs", path)
            if converted.returncode != 0:
                raise AssertionError("%s: %s" % (name, converted.stderr))
            cls.overlays[name] = Rendered(name, path, json.loads(converted.stdout))

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_every_overlay_renders(self):
        self.assertEqual(set(self.overlays), {"tier", "sidecar", "job", "servicemonitor"})
        for r in self.overlays.values():
            self.assertTrue(r.objects, r.name)

    def test_every_object_is_valid(self):
        out = node("validate.mjs", *[r.path for r in self.overlays.values()])
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        self.assertIn(", 0 invalid", out.stdout)

    def test_the_validator_refuses_broken_manifests(self):
        """A wrong type, a misspelt field and an unknown kind, each in a copy of the tier's rendering, fail
        validation."""
        with open(self.overlays["tier"].path) as f:
            text = f.read()
        for what, broken in (("a string port", text.replace("containerPort: 9180", 'containerPort: "9180"')),
                             ("a misspelt field", text.replace("readOnlyRootFilesystem:", "readOnlyRootFileSystem:")),
                             ("an unknown kind", text.replace("kind: PodDisruptionBudget", "kind: PodBudget"))):
            self.assertTrue(broken != text, "the test no longer breaks anything: " + what)
            path = os.path.join(self.tmp, "broken.yaml")
            with open(path, "w") as f:
                f.write(broken)
            out = node("validate.mjs", path)
            self.assertEqual(out.returncode, 1, "%s passed validation:\n%s" % (what, out.stdout))
            self.assertIn("INVALID", out.stdout)

    def test_pods_are_locked_down(self):
        uid = image_uid()
        for r in self.overlays.values():
            for owner, spec in pod_specs(r):
                where = "%s: %s" % (r.name, owner)
                self.assertIs(spec.get("automountServiceAccountToken"), False, where)
                pod = spec["securityContext"]
                self.assertIs(pod["runAsNonRoot"], True, where)
                self.assertEqual(pod["runAsUser"], uid, where)
                containers = slotshift_containers(spec)
                self.assertTrue(containers, where)
                for c in spec.get("containers", []) + spec.get("initContainers", []):
                    sc = c["securityContext"]
                    self.assertIs(sc["readOnlyRootFilesystem"], True, where + "/" + c["name"])
                    self.assertIs(sc["allowPrivilegeEscalation"], False, where + "/" + c["name"])
                    self.assertEqual(sc["capabilities"]["drop"], ["ALL"], where + "/" + c["name"])
                    self.assertIn("memory", c["resources"]["limits"], where + "/" + c["name"])
                    self.assertIn("cpu", c["resources"]["requests"], where + "/" + c["name"])

    def proxy_config(self, rendered, spec, container):
        """The proxy.json a proxy container reads: from the ConfigMap its volume names."""
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/etc/slotshift/proxy.json")
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        configmap = rendered.one("ConfigMap", volume["configMap"]["name"])
        return json.loads(configmap["data"][mount["subPath"]])

    def proxies(self):
        """(overlay, owner, pod spec, container, proxy.json) of every proxy."""
        for r in self.overlays.values():
            for owner, spec in pod_specs(r):
                for c in slotshift_containers(spec):
                    if is_proxy(c):
                        yield r, owner, spec, c, self.proxy_config(r, spec, c)

    def test_proxy_probes_and_drain(self):
        seen = 0
        for r, owner, spec, c, config in self.proxies():
            seen += 1
            where = "%s: %s" % (r.name, owner)
            admin_port = int(config["admin"].rsplit(":", 1)[1])
            self.assertNotEqual(config["admin"].rsplit(":", 1)[0], "127.0.0.1",
                                where + ": the kubelet and Prometheus reach the admin port on the pod's address")
            self.assertTrue(config.get("admin-token-file"), where + ": a non-loopback admin port needs a token")
            ports = {p["name"]: p["containerPort"] for p in c["ports"]}
            self.assertEqual(ports["admin"], admin_port, where)
            live = c["livenessProbe"]["httpGet"]
            self.assertEqual((live["path"], live["port"]), ("/healthz", "admin"), where)
            ready = c["readinessProbe"]["httpGet"]
            self.assertEqual((ready["path"], ready["port"]), ("/readyz", "admin"), where)
            stop = c["lifecycle"]["preStop"]["exec"]["command"]
            self.assertEqual(stop[0], "sleep", where)
            drain_s = config.get("drain-timeout-ms", DEFAULT_DRAIN_MS) / 1000
            self.assertGreater(spec["terminationGracePeriodSeconds"], int(stop[1]) + drain_s,
                               where + ": the grace period must cover preStop and the drain")
        self.assertEqual(seen, 3)  # tier, sidecar, and the tier under the ServiceMonitor

    def test_sidecar_listens_on_loopback_only(self):
        r = self.overlays["sidecar"]
        spec = r.one("Deployment", "example-app")["spec"]["template"]["spec"]
        proxy = next(c for c in spec["initContainers"] if c["name"] == "slotshift-proxy")
        self.assertEqual(proxy["restartPolicy"], "Always")  # a native sidecar
        self.assertEqual(self.proxy_config(r, spec, proxy)["listen"], "127.0.0.1:6379")

    def test_services_pdbs_and_servicemonitor_select_the_proxies(self):
        for name, deployment in (("tier", "slotshift-proxy"), ("sidecar", "example-app"),
                                 ("servicemonitor", "slotshift-proxy")):
            r = self.overlays[name]
            labels = r.one("Deployment", deployment)["spec"]["template"]["metadata"]["labels"]
            headless = [s for s in r.of_kind("Service") if s["spec"].get("clusterIP") == "None"]
            self.assertEqual(len(headless), 1, name)
            self.assertTrue(selects(headless[0]["spec"]["selector"], labels), name)
            self.assertIs(headless[0]["spec"].get("publishNotReadyAddresses"), True, name)
            self.assertEqual([(p["name"], p["port"]) for p in headless[0]["spec"]["ports"]], [("admin", 9180)])
            for pdb in r.of_kind("PodDisruptionBudget"):
                self.assertTrue(selects(pdb["spec"]["selector"]["matchLabels"], labels), name)
            self.assertEqual(len(r.of_kind("PodDisruptionBudget")), 1, name)
        r = self.overlays["servicemonitor"]
        monitor = r.one("ServiceMonitor", "slotshift-proxy")
        matched = [s for s in r.of_kind("Service")
                   if selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
        self.assertEqual([s["metadata"]["name"] for s in matched], ["slotshift-proxy-admin"])
        endpoint = monitor["spec"]["endpoints"][0]
        self.assertEqual((endpoint["port"], endpoint["path"]), ("admin", "/metrics"))
        credentials = endpoint["authorization"]["credentials"]
        self.assertIn(credentials["key"], r.one("Secret", credentials["name"])["stringData"])

    def test_job_finds_the_tiers_proxies(self):
        job = self.overlays["job"].one("Job", "slotshift-move")
        spec = job["spec"]["template"]["spec"]
        self.assertEqual(spec["restartPolicy"], "Never")
        args = spec["containers"][0]["args"]
        dns = args[args.index("--proxy-dns") + 1]
        service = self.overlays["tier"].one("Service", dns.split(":")[0])
        self.assertEqual(service["spec"]["clusterIP"], "None")
        self.assertIn(int(dns.split(":")[1]), [p["port"] for p in service["spec"]["ports"]])

    def secret_files(self, rendered, texts):
        """Every /etc/slotshift/secrets/KEY the texts name, checked against the Secret; written to a directory
        of this test with the Secret's values. Returns that directory."""
        secret = rendered.one("Secret", "slotshift")["stringData"]
        directory = os.path.join(self.tmp, "secrets-" + rendered.name)
        os.makedirs(directory, exist_ok=True)
        for key in re.findall(re.escape(SECRETS_DIR) + r"/([\w.-]+)", " ".join(texts)):
            self.assertIn(key, secret, "%s: %s/%s is not a key of the Secret" % (rendered.name, SECRETS_DIR, key))
            with open(os.path.join(directory, key), "w") as f:
                f.write(secret[key] + "\n")
        return directory

    def test_the_proxy_accepts_every_configmap(self):
        for r, owner, spec, c, config in self.proxies():
            where = "%s: %s" % (r.name, owner)
            text = json.dumps(config)
            secrets = self.secret_files(r, [text] + c.get("args", []))
            path = os.path.join(self.tmp, "proxy-%s.json" % r.name)
            with open(path, "w") as f:
                f.write(text.replace(SECRETS_DIR, secrets))
            args = [path if a == "/etc/slotshift/proxy.json" else a.replace(SECRETS_DIR, secrets)
                    for a in c.get("args", [])]
            # The proxy loads the file and checks the settings together (logins, TLS, the admin token) before
            # it checks --max-pipeline; an invalid one stops it there, before it listens or connects.
            out = subprocess.run([PROXY_BIN, *args, "--max-pipeline", "1"], capture_output=True, text=True,
                                 timeout=30)
            self.assertEqual(out.returncode, 2, where + ": " + out.stderr)
            self.assertIn("slotshift-proxy: --max-pipeline must be at least 2", out.stderr,
                          where + ": the proxy refused the manifest's settings")
            self.assertNotIn("unknown setting", out.stderr, where)

    def test_slotshift_accepts_the_jobs_arguments(self):
        r = self.overlays["job"]
        container = r.one("Job", "slotshift-move")["spec"]["template"]["spec"]["containers"][0]
        secrets = self.secret_files(r, container["args"])
        work = os.path.join(self.tmp, "job-work")
        os.makedirs(work, exist_ok=True)
        args = [a.replace(SECRETS_DIR, secrets).replace("/var/lib/slotshift", work) for a in container["args"]]
        # A node that refuses connections: slotshift gets past its flags and stops at its first connection.
        args[args.index("--cluster") + 1] = "127.0.0.1:1"
        # The metrics port the manifest names, on a port of this test's own.
        port = args[args.index("--metrics") + 1].rsplit(":", 1)[1]
        self.assertIn(int(port), [p["containerPort"] for p in container["ports"] if p["name"] == "metrics"])
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            free = probe.getsockname()[1]
        args[args.index("--metrics") + 1] = "127.0.0.1:%d" % free
        env = dict(os.environ)
        for e in container.get("env", []):
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = r.one("Secret", ref["name"])["stringData"][ref["key"]]
        out = subprocess.run([SLOTSHIFT_BIN, *args], capture_output=True, text=True, timeout=60, env=env)
        # Refused before anything was touched (exit status 4: the Job's podFailurePolicy lets it try again).
        self.assertEqual(out.returncode, 4, out.stderr)
        self.assertIn("cannot reach the seed node 127.0.0.1:1", out.stderr)
        # The Job's podFailurePolicy fails the Job at once on the statuses a retry cannot mend, and on no other.
        policy = r.one("Job", "slotshift-move")["spec"]["podFailurePolicy"]["rules"]
        fail_job = [rule["onExitCodes"] for rule in policy if rule["action"] == "FailJob"]
        self.assertEqual(fail_job, [{"containerName": "slotshift", "operator": "In", "values": [2, 3, 5]}])


if __name__ == "__main__":
    unittest.main(verbosity=2)
