// ioredis in standalone mode against slotshift-proxy: node ioredis_test.js PORT. Exits non-zero on any failure.
// With IOREDIS_PASSWORD (and IOREDIS_USERNAME) in the environment, it logs in as an application would.
'use strict';
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const Redis = require('ioredis');

const port = Number(process.argv[2]);
const checks = [];
const check = (name, fn) => checks.push({ name, fn });

check('strings, hashes, lists with TTLs', async (r) => {
  assert.equal(await r.set('io:s', 'v', 'EX', 100), 'OK');
  assert.equal(await r.get('io:s'), 'v');
  assert.ok((await r.ttl('io:s')) > 90);
  await r.hset('io:h', { a: '1', b: '2' });
  assert.deepEqual(await r.hgetall('io:h'), { a: '1', b: '2' });
  await r.del('io:l');
  assert.equal(await r.rpush('io:l', 'a', 'b'), 2);
  assert.deepEqual(await r.lrange('io:l', 0, -1), ['a', 'b']);
});

check('binary keys and values', async (r) => {
  const value = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
  const key = Buffer.from([0, 255, 13, 10]);
  await r.set(key, value);
  assert.ok(value.equals(await r.getBuffer(key)));
});

check('a pipeline of 10,000 commands comes back in order', async (r) => {
  const p = r.pipeline();
  for (let i = 0; i < 10000; i++) {
    if (i % 2 === 0) p.set(`io:p:${i}`, `v${i}`);
    else p.get(`io:p:${i - 1}`);
  }
  const out = await p.exec();
  out.forEach(([err, value], i) => {
    assert.equal(err, null);
    assert.equal(value, i % 2 === 0 ? 'OK' : `v${i - 1}`);
  });
});

check('multi-key commands across slots', async (r) => {
  const keys = Array.from({ length: 100 }, (_, i) => `io:mk:${i}`);
  await r.mset(...keys.flatMap((k) => [k, k.toUpperCase()]));
  assert.deepEqual(await r.mget(...keys, 'io:mk:none'), [...keys.map((k) => k.toUpperCase()), null]);
  assert.equal(await r.del(...keys), 100);
});

check('transactions in one slot', async (r) => {
  const out = await r.multi().set('{io}a', '1').incr('{io}a').exec();
  assert.deepEqual(out, [[null, 'OK'], [null, 2]]);
});

check('errors pass through', async (r) => {
  await r.set('io:str', 'x');
  await assert.rejects(r.lpush('io:str', 'a'), /^ReplyError: WRONGTYPE Operation against a key holding the wrong kind of value/);
  await assert.rejects(r.msetnx('io:a', '1', 'io:b', '2'), /CROSSSLOT/);
});

check('pub/sub on a connection of its own', async (r) => {
  const sub = r.duplicate();
  try {
    await sub.subscribe('io:chan');
    const got = new Promise((resolve) => sub.on('message', (channel, message) => resolve([channel, message])));
    assert.equal(await r.publish('io:chan', 'hi'), 1);
    assert.deepEqual(await got, ['io:chan', 'hi']);
  } finally {
    sub.disconnect();
  }
});

(async () => {
  const r = new Redis({
    port,
    host: '127.0.0.1',
    lazyConnect: true,
    maxRetriesPerRequest: 0,
    username: process.env.IOREDIS_USERNAME,
    password: process.env.IOREDIS_PASSWORD,
    // With IOREDIS_TLS_DIR, over TLS as an application would: the CA that signs the proxy's certificate, and a
    // client certificate of its own.
    tls: process.env.IOREDIS_TLS_DIR ? {
      ca: fs.readFileSync(path.join(process.env.IOREDIS_TLS_DIR, 'ca.crt')),
      cert: fs.readFileSync(path.join(process.env.IOREDIS_TLS_DIR, 'client.crt')),
      key: fs.readFileSync(path.join(process.env.IOREDIS_TLS_DIR, 'client.key')),
    } : undefined,
  });
  await r.connect();
  let passed = 0, failed = 0;
  for (const { name, fn } of checks) {
    try {
      await fn(r);
      passed++;
      console.log(`ok - ${name}`);
    } catch (e) {
      failed++;
      console.log(`not ok - ${name}: ${e.stack}`);
    }
  }
  await r.quit();
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed === 0 ? 0 : 1);
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
