#!/usr/bin/python3
"""Generates common/command_table_generated.inc, the command table compiled into common/command_table.cc.

The table is read from running redis-server processes with COMMAND (arity, flags, ACL categories, legacy key
range, tips, key specs, subcommands) and COMMAND DOCS (group, since). Several servers can be merged: the first
one given is authoritative for every command and subcommand it knows; a command or subcommand that only a later
server knows is added as that server reports it, with its `since` version. Module commands are skipped.

How to regenerate (Redis 7.0 from Debian 12 on the host, Redis 8.0 from a Debian trixie root for the commands of
7.2 and 7.4; see the header of command_table.h):

    redis-server --port 7100 --daemonize yes --save ''
    debootstrap --variant=minbase --include=redis-server trixie /var/cache/slotshift/roots/trixie \
        http://deb.debian.org/debian                                  # once
    chroot /var/cache/slotshift/roots/trixie redis-server --port 7150 --daemonize yes --dir /tmp --save ''
    /usr/bin/python3 common/gen_command_table.py --server 127.0.0.1:7100 --server 127.0.0.1:7150 \
        --output common/command_table_generated.inc
    redis-cli -p 7100 shutdown nosave; redis-cli -p 7150 shutdown nosave

The table takes in the commands Redis 8.0 added too (HGETEX, HSETEX, HGETDEL), so a proxy in front of a Redis 8
cluster routes them; `--max-since 7.4` would leave them out. Where a later server accepts more arguments than 7.0
(ZRANK ... WITHSCORE), the more permissive arity is kept. The output is deterministic: commands and subcommands sorted by name, nothing time-dependent.

Besides what the servers report, one fact is written here from Redis's source (db.c), because no reply carries
it: which commands have a `getkeys_proc`, the C function Redis falls back to when key specs cannot answer
(INCOMPLETE or unknown specs, VARIABLE_FLAGS, bad numkeys). command_table.cc implements each of them.

Only the Python standard library is used (a small RESP2 client over a socket).
"""

import argparse
import socket
import sys

# Redis 7.0 commands that carry a getkeys_proc, and the KeysProc enumerator command_table.cc implements for it.
GETKEYS_PROCS = {
    "bitfield": "kBitfield",
    "blmpop": "kBlmpop",
    "bzmpop": "kBzmpop",
    "eval": "kEval",
    "eval_ro": "kEval",
    "evalsha": "kEval",
    "evalsha_ro": "kEval",
    "fcall": "kFcall",
    "fcall_ro": "kFcall",
    "georadius": "kGeoradius",
    "georadiusbymember": "kGeoradius",
    "lmpop": "kLmpop",
    "migrate": "kMigrate",
    "set": "kSet",
    "sintercard": "kSintercard",
    "sort": "kSort",
    "sort_ro": "kSortRo",
    "xread": "kXread",
    "xreadgroup": "kXread",
    "zdiff": "kZunionInterDiff",
    "zdiffstore": "kZunionInterDiffStore",
    "zinter": "kZunionInterDiff",
    "zintercard": "kSintercard",
    "zinterstore": "kZunionInterDiffStore",
    "zmpop": "kZmpop",
    "zunion": "kZunionInterDiff",
    "zunionstore": "kZunionInterDiffStore",
}

# Names as the server reports them -> enumerators of command_table.h. An unknown name stops the generator, so
# that a new server's flag is added to the header on purpose rather than dropped.
COMMAND_FLAGS = {
    "write": "kWrite", "readonly": "kReadonly", "denyoom": "kDenyOom", "module": "kModule", "admin": "kAdmin",
    "pubsub": "kPubsub", "noscript": "kNoScript", "blocking": "kBlocking", "loading": "kLoading",
    "stale": "kStale", "skip_monitor": "kSkipMonitor", "skip_slowlog": "kSkipSlowlog", "asking": "kAsking",
    "fast": "kFast", "no_auth": "kNoAuth", "may_replicate": "kMayReplicate", "sentinel": "kSentinel",
    "only_sentinel": "kOnlySentinel", "no_mandatory_keys": "kNoMandatoryKeys", "protected": "kProtected",
    "no_async_loading": "kNoAsyncLoading", "no_multi": "kNoMulti", "movablekeys": "kMovableKeys",
    "allow_busy": "kAllowBusy", "module_no_cluster": "kModuleNoCluster", "touches_arbitrary_keys":
    "kTouchesArbitraryKeys",
}
ACL_CATEGORIES = {
    "keyspace": "kKeyspace", "read": "kRead", "write": "kWrite", "set": "kSet", "sortedset": "kSortedSet",
    "list": "kList", "hash": "kHash", "string": "kString", "bitmap": "kBitmap", "hyperloglog": "kHyperLogLog",
    "geo": "kGeo", "stream": "kStream", "pubsub": "kPubsub", "admin": "kAdmin", "fast": "kFast", "slow": "kSlow",
    "blocking": "kBlocking", "dangerous": "kDangerous", "connection": "kConnection",
    "transaction": "kTransaction", "scripting": "kScripting",
}
KEY_SPEC_FLAGS = {
    "RO": "kRO", "RW": "kRW", "OW": "kOW", "RM": "kRM", "access": "kAccess", "update": "kUpdate",
    "insert": "kInsert", "delete": "kDelete", "not_key": "kNotKey", "incomplete": "kIncomplete",
    "variable_flags": "kVariableFlags",
}


class Resp2Client:
    """Just enough of RESP2 for COMMAND and COMMAND DOCS."""

    def __init__(self, host, port):
        self.sock = socket.create_connection((host, port), timeout=10)
        self.buf = b""

    def command(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            a = a.encode() if isinstance(a, str) else a
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.sock.sendall(b"".join(out))
        return self._read()

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("connection closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n):
        while len(self.buf) < n + 2:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("connection closed")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def _read(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n).decode()
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._read() for _ in range(n)]
        raise RuntimeError("unexpected RESP type %r" % kind)


def pairs(flat):
    return dict(zip(flat[::2], flat[1::2]))


def parse_key_spec(raw):
    d = pairs(raw)
    bs, fk = pairs(d["begin_search"]), pairs(d["find_keys"])
    spec = {"flags": sorted(d["flags"]), "bs": bs["type"], "fk": fk["type"]}
    bsspec, fkspec = pairs(bs["spec"]), pairs(fk["spec"])
    if bs["type"] == "index":
        spec["index"] = bsspec["index"]
    elif bs["type"] == "keyword":
        spec["keyword"], spec["startfrom"] = bsspec["keyword"], bsspec["startfrom"]
    if fk["type"] == "range":
        spec["range"] = (fkspec["lastkey"], fkspec["keystep"], fkspec["limit"])
    elif fk["type"] == "keynum":
        spec["keynum"] = (fkspec["keynumidx"], fkspec["firstkey"], fkspec["keystep"])
    return spec


def parse_command(raw, docs):
    name = raw[0].lower()
    doc = docs.get(name, {})
    subdocs = {k.lower(): pairs(v) for k, v in pairs(doc.get("subcommands", [])).items()}
    return {
        "name": name,
        "arity": raw[1],
        "flags": sorted(raw[2]),
        "first": raw[3],
        "last": raw[4],
        "step": raw[5],
        "acl": sorted(c.lstrip("@") for c in raw[6]),
        "tips": sorted(raw[7]),
        "specs": [parse_key_spec(s) for s in raw[8]],
        "subcommands": {s["name"]: s for s in (parse_command(r, subdocs) for r in raw[9])},
        "group": doc.get("group", ""),
        "since": doc.get("since", ""),
        "module": "module" in raw[2] or "module" in doc,
    }


def read_server(address):
    host, port = address.rsplit(":", 1)
    client = Resp2Client(host, int(port))
    docs = {k.lower(): pairs(v) for k, v in pairs(client.command("COMMAND", "DOCS")).items()}
    commands = {}
    for raw in client.command("COMMAND"):
        cmd = parse_command(raw, docs)
        if not cmd["module"]:
            commands[cmd["name"]] = cmd
    return commands


def version_tuple(v):
    return tuple(int(x) for x in v.split(".") if x.isdigit())


def merge(servers, max_since):
    def wanted(cmd):
        # "7.4" takes every 7.4.x: compare only as many components as the limit has.
        limit = version_tuple(max_since)
        return not max_since or not cmd["since"] or version_tuple(cmd["since"])[:len(limit)] <= limit

    def widen_arity(known, newer):
        # A later server that accepts more arguments (ZRANK ... WITHSCORE in 7.2) must not be refused by a proxy
        # that checks arity with the older table: keep the most permissive of the two.
        a, b = known["arity"], newer["arity"]
        if a != b:
            known["arity"] = -min(abs(a), abs(b))

    table = dict(servers[0])
    for later in servers[1:]:
        for name, cmd in later.items():
            if name not in table:
                if wanted(cmd):
                    table[name] = cmd
                continue
            widen_arity(table[name], cmd)
            known = table[name]["subcommands"]
            for sub_name, sub in cmd["subcommands"].items():
                if sub_name not in known:
                    if wanted(sub):
                        known[sub_name] = sub
                else:
                    widen_arity(known[sub_name], sub)
    return table


def ident(name):
    return "".join(c if c.isalnum() else "_" for c in name)


def cxx_string(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def flag_expr(enum, mapping, names):
    unknown = [n for n in names if n not in mapping]
    if unknown:
        sys.exit("unknown %s name(s) %s: add them to command_table.h and to this script" % (enum, unknown))
    if not names:
        return "%s{}" % enum
    return " | ".join("%s::%s" % (enum, mapping[n]) for n in names)


def emit_command(cmd, out):
    """Writes the arrays `cmd` refers to, then returns the initializer of its CommandInfo."""
    base = ident(cmd["name"])
    specs_ref = tips_ref = subs_ref = "{}"
    if cmd["specs"]:
        out.append("inline constexpr KeySpec kSpecs_%s[] = {" % base)
        for s in cmd["specs"]:
            # Every field is written (GCC's -Wmissing-field-initializers counts designated initializers too).
            bs = {"index": "kIndex", "keyword": "kKeyword"}.get(s["bs"], "kUnknown")
            fk = {"range": "kRange", "keynum": "kKeynum"}.get(s["fk"], "kUnknown")
            fields = [
                ".flags = " + flag_expr("KeySpecFlag", KEY_SPEC_FLAGS, s["flags"]),
                ".begin_search = BeginSearch::" + bs,
                ".index = %d" % s.get("index", 0),
                ".keyword = " + (cxx_string(s["keyword"]) if "keyword" in s else "{}"),
                ".startfrom = %d" % s.get("startfrom", 0),
                ".find_keys = FindKeys::" + fk,
                ".lastkey = %d, .keystep = %d, .limit = %d" % s.get("range", (0, 0, 0)),
                ".keynumidx = %d, .firstkey = %d, .keynum_step = %d" % s.get("keynum", (0, 0, 0)),
            ]
            out.append("    {%s}," % ", ".join(fields))
        out.append("};")
        specs_ref = "kSpecs_%s" % base
    if cmd["tips"]:
        out.append("inline constexpr std::string_view kTips_%s[] = {%s};" %
                   (base, ", ".join(cxx_string(t) for t in cmd["tips"])))
        tips_ref = "kTips_%s" % base
    if cmd["subcommands"]:
        inits = [emit_command(cmd["subcommands"][n], out) for n in sorted(cmd["subcommands"])]
        out.append("inline constexpr CommandInfo kSub_%s[] = {" % base)
        out.extend("    " + i + "," for i in inits)
        out.append("};")
        subs_ref = "kSub_%s" % base
    proc = GETKEYS_PROCS.get(cmd["name"], "kNone")
    return ("{.name = %s, .arity = %d, .flags = %s, .acl = %s, .first_key = %d, .last_key = %d, .key_step = %d, "
            ".key_specs = %s, .tips = %s, .group = %s, .since = %s, .subcommands = %s, .keys_proc = KeysProc::%s}"
            % (cxx_string(cmd["name"]), cmd["arity"], flag_expr("CommandFlag", COMMAND_FLAGS, cmd["flags"]),
               flag_expr("AclCategory", ACL_CATEGORIES, cmd["acl"]), cmd["first"], cmd["last"], cmd["step"],
               specs_ref, tips_ref, cxx_string(cmd["group"]), cxx_string(cmd["since"]), subs_ref, proc))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", action="append", required=True, metavar="HOST:PORT",
                        help="a redis-server to read; repeat it, the first is authoritative")
    parser.add_argument("--max-since", default="", help="leave out commands added after this version")
    parser.add_argument("--output", default="common/command_table_generated.inc")
    args = parser.parse_args()

    servers = [read_server(s) for s in args.server]
    table = merge(servers, args.max_since)
    missing = sorted(set(GETKEYS_PROCS) - set(table))
    if missing:
        sys.exit("commands with a getkeys proc missing from the servers: %s" % missing)

    out = [
        "// Generated by common/gen_command_table.py; do not edit. Regenerate as its header says.",
        "// Servers: %s (the first is authoritative)%s." %
        (", ".join("%d commands" % len(s) for s in servers),
         "; commands added after %s left out" % args.max_since if args.max_since else ""),
        "// Included by command_table.cc inside namespace slotshift::generated.",
        "// clang-format off",
        "",
    ]
    inits = [emit_command(table[name], out) for name in sorted(table)]
    out.append("inline constexpr CommandInfo kCommands[] = {")
    out.extend("    " + i + "," for i in inits)
    out.append("};")
    out.append("// clang-format on")
    with open(args.output, "w") as f:
        f.write("\n".join(out) + "\n")
    nsub = sum(len(c["subcommands"]) for c in table.values())
    print("%s: %d commands, %d subcommands" % (args.output, len(table), nsub))


if __name__ == "__main__":
    main()
