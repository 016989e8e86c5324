// tests/sdk/routes_sdk.mjs — the official mailgun.js SDK against a running inlet (SPEC §7).
//
//   INLET_URL=http://127.0.0.1:8025 INLET_API_KEY=... node routes_sdk.mjs
//
// Creates a route with two actions, lists, gets, matches an address, updates (priority and
// actions), deletes it, and checks every answer as the SDK hands it back.  Prints one line per
// step; exits non-zero on the first failed assertion.  tests/sdk/test_sdk.py runs it.
import assert from 'node:assert/strict';
import FormData from 'form-data';
import Mailgun from 'mailgun.js';

const url = process.env.INLET_URL;
const key = process.env.INLET_API_KEY;
if (!url || !key) {
  console.error('INLET_URL and INLET_API_KEY must be set');
  process.exit(2);
}

const RFC1123 = /^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d\d:\d\d:\d\d GMT$/;
const mailgun = new Mailgun(FormData);
const mg = mailgun.client({ username: 'api', key, url });
const show = (step, value) => console.log(`${step}: ${JSON.stringify(value)}`);

const expression = 'match_recipient("(?P<user>[^@]+)@example\\.com")';
const actions = ['forward("https://hooks.example.test/inbound/\\g<user>")', 'stop()'];

try {
  const created = await mg.routes.create({
    priority: 5, description: 'mailgun.js SDK test', expression, action: actions,
  });
  show('create', created);
  assert.match(created.id, /^[0-9a-f]{24}$/);
  assert.equal(created.priority, 5);
  assert.equal(created.description, 'mailgun.js SDK test');
  assert.equal(created.expression, expression);
  assert.deepEqual(created.actions, actions);
  assert.match(created.created_at, RFC1123);
  assert.ok(!Number.isNaN(Date.parse(created.created_at)), 'created_at parses as a date');

  const listed = await mg.routes.list({ limit: 10, skip: 0 });
  show('list', listed);
  assert.ok(Array.isArray(listed));
  assert.deepEqual(listed.find((r) => r.id === created.id), created);

  const got = await mg.routes.get(created.id);
  show('get', got);
  assert.deepEqual(got, created);

  const matched = await mg.routes.matchAddress('bob@example.com');
  show('matchAddress', matched);
  assert.equal(matched.id, created.id);

  const newActions = ['store(notify="https://hooks.example.test/stored")', 'forward("ops@example.org")'];
  const updated = await mg.routes.update(created.id, { priority: 1, expression, action: newActions });
  show('update', updated);
  assert.equal(updated.message, 'Route has been updated');
  // UpdateRouteResponse = Route & {message}: the flat fields.
  assert.equal(updated.id, created.id);
  assert.equal(updated.priority, 1);
  assert.deepEqual(updated.actions, newActions);
  assert.equal(updated.description, 'mailgun.js SDK test');
  assert.equal(updated.created_at, created.created_at);

  const again = await mg.routes.get(created.id);
  show('get after update', again);
  assert.equal(again.priority, 1);
  assert.deepEqual(again.actions, newActions);

  const destroyed = await mg.routes.destroy(created.id);
  show('destroy', destroyed);
  assert.deepEqual(destroyed, { message: 'Route has been deleted', id: created.id });

  const after = await mg.routes.list({});
  show('list after destroy', after);
  assert.ok(!after.some((r) => r.id === created.id));

  await assert.rejects(mg.routes.get(created.id), (err) => {
    show('get after destroy', { status: err.status, details: err.details });
    assert.equal(err.status, 404);
    return true;
  });
  console.log('SDK routes test: OK');
} catch (err) {
  console.error('SDK routes test FAILED:', err);
  process.exit(1);
}
