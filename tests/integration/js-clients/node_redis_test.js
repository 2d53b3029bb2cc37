// node-redis (npm package `redis`) in its usual configuration, createClient({ url }) standalone, against
// slotshift-proxy as if it were one Redis. Exits non-zero on any failure; every check and the whole run have a
// deadline.
//
//   node node_redis_test.js PORT [--user NAME] [--password PW] [--tls DIR] [--resp3]
//
// --password (and --user): log in as an application would, and check that a client without them, or with a wrong
// password, is refused. --tls DIR: over TLS with DIR/ca.crt as the CA that signs the server's certificate and
// DIR/client.crt/.key as the client's own. --resp3: the same checks over RESP3 (createClient({ RESP: 3 }), which
// sends HELLO 3), plus what only RESP3 has: typed replies (a map, a double), Pub/Sub messages as pushes on a
// connection that still runs commands, and node-redis's client-side cache driven by CLIENT TRACKING. Every check
// passes against one plain redis-server (7.0 and later), which is what the proxy is held to.
'use strict';
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const { parseArgs } = require('node:util');
const {
  createClient, RESP_TYPES, ErrorReply, WatchError, MultiErrorReply, BasicClientSideCache,
} = require('redis');

const { values: opts, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    user: { type: 'string' },
    password: { type: 'string' },
    tls: { type: 'string' },
    resp3: { type: 'boolean', default: false },
  },
});
const port = Number(positionals[0]);
if (!Number.isInteger(port) || port <= 0) {
  console.error('usage: node node_redis_test.js PORT [--user NAME] [--password PW] [--tls DIR] [--resp3]');
  process.exit(2);
}

const CHECK_MS = 30000; // one check
const RUN_MS = 240000; // the whole run: a hang anywhere ends it with a failure
setTimeout(() => {
  console.log(`not ok - the run did not finish within ${RUN_MS} ms`);
  process.exit(1);
}, RUN_MS).unref();

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// fn's promise, or a rejection once ms have passed.
async function within(ms, what, promise) {
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

// Polls cond (sync or async) until it holds; fails after ms.
async function until(ms, what, cond) {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms`);
    await sleep(20);
  }
}

// What an application passes to createClient; extra wins.
function options(extra = {}) {
  const socket = { connectTimeout: 5000, reconnectStrategy: false };
  if (opts.tls) {
    Object.assign(socket, {
      tls: true,
      ca: fs.readFileSync(path.join(opts.tls, 'ca.crt')),
      cert: fs.readFileSync(path.join(opts.tls, 'client.crt')),
      key: fs.readFileSync(path.join(opts.tls, 'client.key')),
    });
  }
  return {
    url: `${opts.tls ? 'rediss' : 'redis'}://127.0.0.1:${port}`,
    username: opts.user,
    password: opts.password,
    RESP: opts.resp3 ? 3 : undefined,
    socket,
    ...extra,
  };
}

// Connects a client made by createClient or duplicate(); socket errors are printed (node-redis emits them as
// 'error' events, which would otherwise end the process).
async function connect(client) {
  client.on('error', (e) => console.error(`client error: ${e.message}`));
  await within(10000, 'connect', client.connect());
  return client;
}

function closeQuietly(client) {
  try {
    client.destroy();
  } catch {
    // already closed
  }
}

// "channel message" strings grouped by channel, each group in arrival order. A cluster orders the messages of one
// channel, not those of different channels published on different masters (a pattern's).
function byChannel(lines) {
  const out = {};
  for (const line of lines) {
    const channel = line.split(' ')[0];
    (out[channel] ??= []).push(line);
  }
  return out;
}

const isReply = (pattern) => (e) => e instanceof ErrorReply && pattern.test(e.message);

const checks = [];
const check = (name, fn, when = true) => {
  if (when) checks.push({ name, fn });
};

check('strings with a TTL, counters, binary keys and values', async (c) => {
  assert.equal(await c.set('nr:s', 'v', { EX: 100 }), 'OK');
  assert.equal(await c.get('nr:s'), 'v');
  assert.ok((await c.ttl('nr:s')) > 90);
  assert.equal(await c.append('nr:s', 'alue'), 5);
  assert.equal(await c.getRange('nr:s', 1, 3), 'alu');
  await c.del('nr:n');
  assert.equal(await c.incrBy('nr:n', 5), 5);
  assert.equal(await c.decr('nr:n'), 4);
  assert.equal(await c.get('nr:missing'), null);
  const b = c.withTypeMapping({ [RESP_TYPES.BLOB_STRING]: Buffer });
  const value = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
  const key = Buffer.from([0, 255, 13, 10, 36]);
  assert.equal(await b.set(key, value), 'OK');
  assert.ok(value.equals(await b.get(key)));
});

check('hashes', async (c) => {
  await c.del('nr:h');
  assert.equal(await c.hSet('nr:h', { a: '1', b: '2', c: '3' }), 3);
  assert.deepEqual({ ...(await c.hGetAll('nr:h')) }, { a: '1', b: '2', c: '3' });
  assert.equal(await c.hIncrBy('nr:h', 'a', 10), 11);
  assert.deepEqual(await c.hmGet('nr:h', ['a', 'b', 'none']), ['11', '2', null]);
  assert.equal(await c.hDel('nr:h', 'c'), 1);
  assert.equal(await c.hLen('nr:h'), 2);
  assert.deepEqual({ ...(await c.hGetAll('nr:no-hash')) }, {});
});

check('large values, a few MB both ways', async (c) => {
  const b = c.withTypeMapping({ [RESP_TYPES.BLOB_STRING]: Buffer });
  const big = crypto.randomBytes(4 << 20);
  assert.equal(await c.set('nr:big', big), 'OK');
  assert.equal(await c.strLen('nr:big'), big.length);
  assert.ok(big.equals(await b.get('nr:big')));
  // Three at once, in flight together, on keys of different slots, and read back in one MGET.
  const values = [1, 2, 3].map((i) => crypto.randomBytes((2 << 20) + i));
  const keys = values.map((_, i) => `nr:big:${i}`);
  await Promise.all(keys.map((k, i) => c.set(k, values[i])));
  const got = await b.mGet(keys);
  got.forEach((v, i) => assert.ok(values[i].equals(v), `value ${i} differs`));
});

check('a pipeline of 10,000 commands with MSET/MGET across slots comes back in order', async (c) => {
  // node-redis pipelines every command issued in the same tick: these 10,000 go out together. Each MSET and MGET
  // names keys of four slots, which the proxy splits over the masters and joins back.
  const keys = (i) => [0, 1, 2, 3].map((j) => `nr:p:${i - (i % 4)}:${j}`);
  const sent = [];
  const want = [];
  for (let i = 0; i < 10000; i++) {
    if (i % 4 === 0) {
      sent.push(c.set(`nr:p:${i}`, `v${i}`));
      want.push('OK');
    } else if (i % 4 === 1) {
      sent.push(c.get(`nr:p:${i - 1}`));
      want.push(`v${i - 1}`);
    } else if (i % 4 === 2) {
      sent.push(c.mSet(keys(i).map((k) => [k, `${k}!`])));
      want.push('OK');
    } else {
      sent.push(c.mGet([...keys(i), 'nr:p:none']));
      want.push([...keys(i).map((k) => `${k}!`), null]);
    }
  }
  assert.deepEqual(await Promise.all(sent), want);
  // The explicit form: a batch without MULTI.
  const counters = Array.from({ length: 50 }, (_, i) => `nr:pc:${i}`);
  await c.del(counters);
  const p = c.multi();
  for (let i = 0; i < 2000; i++) p.incr(counters[i % 50]);
  assert.deepEqual(await p.execAsPipeline(), Array.from({ length: 2000 }, (_, i) => Math.floor(i / 50) + 1));
});

check('multi-key commands across slots', async (c) => {
  const keys = Array.from({ length: 100 }, (_, i) => `nr:mk:${i}`);
  assert.equal(await c.mSet(keys.map((k) => [k, k.toUpperCase()])), 'OK');
  assert.deepEqual(await c.mGet([...keys, 'nr:mk:none']), [...keys.map((k) => k.toUpperCase()), null]);
  assert.equal(await c.exists([...keys, 'nr:mk:none']), 100);
  assert.equal(await c.del(keys), 100);
  assert.deepEqual(await c.mGet(keys.slice(0, 3)), [null, null, null]);
});

check('transactions: MULTI/EXEC, a command failing inside, a transaction refused whole', async (c) => {
  await c.del('{nr}t');
  assert.deepEqual(await c.multi().set('{nr}t', '1').incr('{nr}t').get('{nr}t').exec(), ['OK', 2, '2']);
  // A command that fails when EXEC runs it: the others still apply, the error is the client's error type.
  await assert.rejects(c.multi().set('{nr}t2', 'x').lPush('{nr}t2', 'a').get('{nr}t2').exec(), (e) => {
    assert.ok(e instanceof MultiErrorReply, e.stack);
    assert.deepEqual(e.errorIndexes, [1]);
    assert.equal(e.replies[0], 'OK');
    assert.ok(isReply(/^WRONGTYPE/)(e.replies[1]), String(e.replies[1]));
    assert.equal(e.replies[2], 'x');
    return true;
  });
  // A command refused while queued (wrong number of arguments): EXEC aborts and applies nothing. node-redis
  // rejects with the first error among the replies, the refusal itself (EXEC's EXECABORT comes after it).
  await c.del('{nr}t3');
  await assert.rejects(c.multi().set('{nr}t3', 'x').addCommand(['SET', '{nr}t3']).exec(),
    isReply(/^ERR wrong number of arguments for 'set' command$/));
  assert.equal(await c.get('{nr}t3'), null);
  // The client is usable after both.
  assert.equal(await c.get('{nr}t'), '2');
});

check('WATCH: a key changed by another client fails the transaction (WatchError), an unchanged one not', async (c) => {
  const other = await connect(c.duplicate());
  try {
    await c.set('{nr}w', '0');
    await c.watch('{nr}w');
    assert.equal(await other.set('{nr}w', 'theirs'), 'OK');
    // node-redis 4 and 5 both turn EXEC's null reply into a WatchError.
    await assert.rejects(c.multi().set('{nr}w', 'mine').exec(), WatchError);
    assert.equal(await c.get('{nr}w'), 'theirs');
    // Nobody else writes: the transaction applies.
    await c.watch(['{nr}w', '{nr}w2']);
    const v = await c.get('{nr}w');
    assert.deepEqual(await c.multi().set('{nr}w', `${v}+mine`).exec(), ['OK']);
    assert.equal(await c.get('{nr}w'), 'theirs+mine');
    // UNWATCH: a later change no longer matters.
    await c.watch('{nr}w');
    assert.equal(await c.unwatch(), 'OK');
    await other.set('{nr}w', 'again');
    assert.deepEqual(await c.multi().set('{nr}w', 'last').exec(), ['OK']);
    assert.equal(await other.get('{nr}w'), 'last');
  } finally {
    closeQuietly(other);
  }
});

check('errors surface as ErrorReply and leave the connection usable', async (c) => {
  await c.set('nr:str', 'x');
  await assert.rejects(c.lPush('nr:str', 'a'),
    isReply(/^WRONGTYPE Operation against a key holding the wrong kind of value$/));
  await assert.rejects(c.sendCommand(['NOSUCHCOMMAND', 'a']), isReply(/^ERR unknown command/));
  await assert.rejects(c.incr('nr:str'), isReply(/^ERR value is not an integer or out of range$/));
  assert.equal(await c.get('nr:str'), 'x');
});

check('Pub/Sub on a duplicate: subscribe, pSubscribe, sSubscribe, every message once and in order', async (c) => {
  const sub = await connect(c.duplicate());
  try {
    const got = { chan: [], pat: [], shard: [] };
    await sub.subscribe('nr:chan', (message, channel) => got.chan.push(`${channel} ${message}`));
    await sub.pSubscribe('nr:pat:*', (message, channel) => got.pat.push(`${channel} ${message}`));
    await sub.sSubscribe('nr:shard', (message, channel) => got.shard.push(`${channel} ${message}`));
    const n = 300;
    const receivers = await Promise.all(Array.from({ length: n }, (_, i) => [
      c.publish('nr:chan', `m${i}`), c.publish(`nr:pat:${i % 3}`, `p${i}`), c.sPublish('nr:shard', `s${i}`),
    ]).flat());
    // PUBLISH counts the receivers on the node it ran on, as in a cluster: the subscriber's channels and patterns
    // share a node, the master of its first channel's slot, which a pattern's channel may not map to (0 or 1).
    // SPUBLISH runs where its shard channel's subscribers are.
    receivers.forEach((count, i) => {
      assert.ok(i % 3 === 1 ? count === 0 || count === 1 : count === 1, `publish ${i} reached ${count}`);
    });
    const want = {
      chan: Array.from({ length: n }, (_, i) => `nr:chan m${i}`),
      pat: Array.from({ length: n }, (_, i) => `nr:pat:${i % 3} p${i}`),
      shard: Array.from({ length: n }, (_, i) => `nr:shard s${i}`),
    };
    await until(10000, 'every message', () => Object.keys(want).every((k) => got[k].length >= n));
    await sleep(300); // a message delivered twice would be here by now
    for (const kind of Object.keys(want)) assert.deepEqual(byChannel(got[kind]), byChannel(want[kind]), kind);
    await sub.unsubscribe('nr:chan');
    await sub.pUnsubscribe('nr:pat:*');
    await sub.sUnsubscribe('nr:shard');
    assert.equal(await c.publish('nr:chan', 'late'), 0);
    assert.equal(await c.sPublish('nr:shard', 'late'), 0);
    // Back out of subscribed mode, the connection runs commands again. (node-redis 5.12.1 over RESP2 hands every
    // reply after Pub/Sub back as a Buffer, against one plain Redis as well: hence String().)
    assert.equal(String(await sub.set('nr:ps', 'after')), 'OK');
    assert.equal(String(await sub.get('nr:ps')), 'after');
  } finally {
    closeQuietly(sub);
  }
});

check('a login: no password or a wrong one is refused, AUTH again succeeds', async (c) => {
  const anon = createClient(options({ username: undefined, password: undefined }));
  anon.on('error', () => {});
  try {
    // Over RESP2 the first command meets NOAUTH; over RESP3 the HELLO 3 that connect() sends already does.
    await assert.rejects(within(10000, 'no password', (async () => {
      await anon.connect();
      return anon.get('nr:s');
    })()), /NOAUTH/);
  } finally {
    closeQuietly(anon);
  }
  const wrong = createClient(options({ password: `${opts.password}-wrong` }));
  wrong.on('error', () => {});
  try {
    await assert.rejects(within(10000, 'wrong password', (async () => {
      await wrong.connect();
      return wrong.get('nr:s');
    })()), /WRONGPASS|invalid password|invalid username-password/);
  } finally {
    closeQuietly(wrong);
  }
  assert.equal(await c.auth({ username: opts.user, password: opts.password }), 'OK');
  assert.equal(await c.set('nr:auth', 'in'), 'OK');
  assert.equal(await c.get('nr:auth'), 'in');
}, opts.password !== undefined);

// RESP3 only.

check('RESP3: HELLO 3 made the connection RESP3', async (c) => {
  assert.match(String(await c.sendCommand(['CLIENT', 'INFO'])), /\bresp=3\b/);
  const hello = await c.sendCommand(['HELLO', '3'], { typeMapping: { [RESP_TYPES.MAP]: Map } });
  assert.ok(hello instanceof Map, `HELLO 3 answered ${JSON.stringify(hello)}`);
  assert.equal(hello.get('proto'), 3);
  assert.equal(typeof hello.get('id'), 'number');
}, opts.resp3);

check('RESP3: HGETALL answers a map, ZSCORE a double, SMEMBERS a set, a missing key null', async (c) => {
  await c.del(['nr:h3', 'nr:z3', 'nr:set3']);
  await c.hSet('nr:h3', { a: '1', b: '2' });
  // sendCommand bypasses node-redis's own reply transforms: what arrives is what the wire carried.
  const asMap = await c.sendCommand(['HGETALL', 'nr:h3'], { typeMapping: { [RESP_TYPES.MAP]: Map } });
  assert.ok(asMap instanceof Map, `HGETALL answered ${JSON.stringify(asMap)}`);
  assert.deepEqual([...asMap].sort(), [['a', '1'], ['b', '2']]);
  const asObject = await c.sendCommand(['HGETALL', 'nr:h3']);
  assert.ok(!Array.isArray(asObject), `HGETALL answered an array: ${JSON.stringify(asObject)}`);
  assert.deepEqual({ ...asObject }, { a: '1', b: '2' });
  assert.equal(await c.zAdd('nr:z3', { score: 1.5, value: 'm' }), 1);
  assert.strictEqual(await c.sendCommand(['ZSCORE', 'nr:z3', 'm']), 1.5);
  // (A sum that needs no rounding: node-redis 5.12.1 reads the RESP3 double 1.75 as 1.7500000000000002.)
  assert.strictEqual(await c.sendCommand(['ZINCRBY', 'nr:z3', '1', 'm']), 2.5);
  await c.sAdd('nr:set3', ['x', 'y']);
  const set = await c.sendCommand(['SMEMBERS', 'nr:set3'], { typeMapping: { [RESP_TYPES.SET]: Set } });
  assert.ok(set instanceof Set, `SMEMBERS answered ${JSON.stringify(set)}`);
  assert.deepEqual([...set].sort(), ['x', 'y']);
  assert.strictEqual(await c.sendCommand(['GET', 'nr:none3']), null);
}, opts.resp3);

check('RESP3: Pub/Sub messages arrive as pushes, the subscribed connection keeps running commands', async (c) => {
  const sub = await connect(c.duplicate());
  try {
    const got = [];
    await sub.subscribe('nr:push', (message) => got.push(message));
    await sub.pSubscribe('nr:pushp:*', (message, channel) => got.push(`${channel} ${message}`));
    // Over RESP2 a node refuses these on a subscribed connection.
    assert.equal(await sub.set('nr:push:k', 'v'), 'OK');
    assert.equal(await sub.ping(), 'PONG');
    // Messages interleaved with replies on the same connection: node-redis sorts pushes from replies only by
    // their RESP3 type, so a message sent as a plain array would be taken for a reply and shift every later one.
    const n = 300;
    const sent = [];
    for (let i = 0; i < n; i++) {
      sent.push(c.publish('nr:push', `m${i}`), sub.get('nr:push:k'), c.publish(`nr:pushp:${i % 2}`, `p${i}`));
    }
    const replies = await Promise.all(sent);
    replies.forEach((r, i) => {
      // As above: a pattern's channel may count its receivers on another node than the subscriber's (0).
      assert.ok(i % 3 === 1 ? r === 'v' : i % 3 === 0 ? r === 1 : r === 0 || r === 1, `reply ${i}: ${r}`);
    });
    await until(10000, 'every message', () => got.length >= 2 * n);
    await sleep(300);
    const want = Array.from({ length: n }, (_, i) => [`m${i}`, `nr:pushp:${i % 2} p${i}`]);
    assert.deepEqual(got.filter((m) => m.startsWith('m')), want.map((w) => w[0]));
    assert.deepEqual(byChannel(got.filter((m) => !m.startsWith('m'))), byChannel(want.map((w) => w[1])));
    assert.equal(got.length, 2 * n);
  } finally {
    closeQuietly(sub);
  }
}, opts.resp3);

check('RESP3: client-side cache (CLIENT TRACKING) serves repeats and drops a key another client wrote', async (c) => {
  const cache = new BasicClientSideCache({ ttl: 0, maxEntries: 0 });
  const cached = await connect(createClient(options({ clientSideCache: cache })));
  try {
    assert.match(String(await cached.sendCommand(['CLIENT', 'INFO'])), / flags=[A-Za-z]*t/); // t: tracking
    await c.set('nr:cached', 'one');
    assert.equal(await cached.get('nr:cached'), 'one');
    assert.equal(await cached.get('nr:cached'), 'one');
    assert.equal(cache.stats().hitCount, 1, 'the repeat came from the cache');
    await c.set('nr:cached', 'two');
    // The invalidation push arrives on its own time; until then the cache may still answer 'one'.
    await until(5000, 'the invalidation', async () => (await cached.get('nr:cached')) === 'two');
    assert.ok(cache.stats().missCount >= 2, JSON.stringify(cache.stats()));
    const hits = cache.stats().hitCount;
    assert.equal(await cached.get('nr:cached'), 'two');
    assert.equal(cache.stats().hitCount, hits + 1, 'the new value is cached in turn');
  } finally {
    closeQuietly(cached);
  }
}, opts.resp3);

(async () => {
  const c = await connect(createClient(options()));
  let passed = 0, failed = 0;
  for (const { name, fn } of checks) {
    try {
      await within(CHECK_MS, name, fn(c));
      passed++;
      console.log(`ok - ${name}`);
    } catch (e) {
      failed++;
      console.log(`not ok - ${name}: ${e.stack}`);
    }
  }
  closeQuietly(c);
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed === 0 ? 0 : 1);
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
