// tests/sdk/storage_sdk.mjs — the official mailgun.js SDK against a running inlet: stored messages
// (SPEC §6) and events (SPEC §7).
//
//   INLET_URL=... INLET_API_KEY=... INLET_DOMAIN=example.com INLET_STORAGE_KEY=... \
//   INLET_MESSAGE_ID=<inlet id> INLET_HEADER_ID=<Message-Id without <>> INLET_SUBJECT=... \
//   INLET_RECIPIENT=... INLET_SENDER=... node storage_sdk.mjs
//
// The message must have been stored (a route with store()) before: tests/sdk/test_sdk.py sends
// it over SMTP and reads its storage key from the database.  Retrieves it with
// messages.retrieveStoredEmail, walks events.get page by page ({page: pages.next.page}), filters
// them by the Message-Id header and by filter expressions, and last resends the message with messages.resendEmail.  Prints one line per step; exits
// non-zero on the first failed assertion.
import assert from 'node:assert/strict';
import FormData from 'form-data';
import Mailgun from 'mailgun.js';

const env = process.env;
for (const k of ['INLET_URL', 'INLET_API_KEY', 'INLET_DOMAIN', 'INLET_STORAGE_KEY', 'INLET_MESSAGE_ID',
  'INLET_HEADER_ID', 'INLET_SUBJECT', 'INLET_RECIPIENT', 'INLET_SENDER']) {
  if (!env[k]) {
    console.error(`${k} must be set`);
    process.exit(2);
  }
}
const domain = env.INLET_DOMAIN;
const key = env.INLET_STORAGE_KEY;
// events.get warns that it is deprecated (in favour of logs.list, which inlet does not serve).
const quiet = { warn: () => {}, info: console.info, error: console.error, log: console.log };
const mailgun = new Mailgun(FormData);
const mg = mailgun.client({ username: 'api', key: env.INLET_API_KEY, url: env.INLET_URL });
mg.events.logger = quiet;
const show = (step, value) => console.log(`${step}: ${JSON.stringify(value).slice(0, 600)}`);
const storageUrl = `${env.INLET_URL}/v3/domains/${domain}/messages/${key}`;

try {
  const stored = await mg.messages.retrieveStoredEmail(domain, key);
  show('retrieveStoredEmail', stored);
  assert.equal(stored.recipients, env.INLET_RECIPIENT);
  assert.equal(stored.sender, env.INLET_SENDER);
  assert.equal(stored.subject, env.INLET_SUBJECT);
  assert.match(stored['body-plain'], /hello from the sdk test/);
  assert.ok(Array.isArray(stored['message-headers']));
  assert.ok(stored['message-headers'].some(([n, v]) => n === 'Subject' && v === env.INLET_SUBJECT));
  assert.equal(stored.attachments.length, 1);
  assert.equal(stored.attachments[0].name, 'note.txt');
  assert.equal(stored.attachments[0].url, `${storageUrl}/attachments/0`);
  assert.equal(typeof stored['content-id-map'], 'object');
  assert.ok(!('message-url' in stored));

  await assert.rejects(mg.messages.retrieveStoredEmail(domain, 'no-such-key'), (err) => {
    show('retrieveStoredEmail unknown key', { status: err.status, details: err.details });
    assert.equal(err.status, 404);
    return true;
  });

  // Page by page, one event per page, until an empty page.
  const walked = [];
  let page = await mg.events.get(domain, { limit: 1, ascending: 'yes' });
  for (let i = 0; i < 20 && page.items.length; i++) {
    show(`events page ${i}`, { items: page.items.map((e) => [e.event, e.id]), next: page.pages.next });
    assert.equal(page.status, 200);
    assert.equal(page.items.length, 1);
    for (const k of ['next', 'previous', 'first', 'last']) {
      assert.ok(page.pages[k].url.startsWith(`${env.INLET_URL}/v3/${domain}/events/`), page.pages[k].url);
    }
    walked.push(...page.items);
    page = await mg.events.get(domain, { page: page.pages.next.page });
  }
  assert.equal(page.items.length, 0, 'the walk ended with an empty page');
  assert.deepEqual(walked.map((e) => e.event), ['accepted', 'stored']);
  for (const e of walked) {
    assert.equal(e.recipient, env.INLET_RECIPIENT);
    // Events name the message by its Message-Id header, as Mailgun does; inlet's id is an extension.
    assert.equal(e.message.headers['message-id'], env.INLET_HEADER_ID);
    assert.equal(e.message['inlet-id'], env.INLET_MESSAGE_ID);
    assert.equal(e.message.headers.subject, env.INLET_SUBJECT);
    assert.deepEqual(e.message.recipients, [env.INLET_RECIPIENT]);
    assert.equal(e.message.attachments[0].filename, 'note.txt');
    assert.equal(typeof e.timestamp, 'number');
    assert.equal(e['log-level'], 'info');
  }
  assert.deepEqual(walked[1].storage, { key, url: storageUrl });

  // A receiver that got a webhook looks the message up by the Message-Id it has.
  const storedEvents = await mg.events.get(domain, { event: 'stored', 'message-id': env.INLET_HEADER_ID });
  show('events.get event=stored message-id=<header>', storedEvents.items);
  assert.equal(storedEvents.items.length, 1);
  assert.equal(storedEvents.items[0].storage.key, key);
  const byInletId = await mg.events.get(domain, { 'inlet-id': env.INLET_MESSAGE_ID, ascending: 'yes' });
  assert.deepEqual(byInletId.items.map((e) => e.event), ['accepted', 'stored']);
  // Filter expressions (Mailgun's Filter Expression table).
  const either = await mg.events.get(domain, { event: 'accepted OR stored', 'message-id': env.INLET_HEADER_ID,
    ascending: 'yes' });
  show('events.get event="accepted OR stored"', either.items.map((e) => e.event));
  assert.deepEqual(either.items.map((e) => e.event), ['accepted', 'stored']);
  const notAccepted = await mg.events.get(domain, { event: 'NOT accepted' });
  assert.deepEqual(notAccepted.items.map((e) => e.event), ['stored']);
  const phrase = await mg.events.get(domain, { subject: `"${env.INLET_SUBJECT}" AND NOT nothing`,
    attachment: 'note.txt', size: '>100' });
  assert.equal(phrase.items.length, 2);
  // What inlet cannot answer is a 400 with a message, never an empty list.
  await assert.rejects(mg.events.get(domain, { event: 'accepted OR' }), (err) => {
    show('events.get event="accepted OR"', { status: err.status, details: err.details });
    assert.equal(err.status, 400);
    return true;
  });
  await assert.rejects(mg.events.get(domain, { tags: 'newsletter' }), (err) => {
    assert.equal(err.status, 400);
    return true;
  });
  const none = await mg.events.get(domain, { recipient: 'nobody@example.com' });
  assert.deepEqual(none.items, []);

  // Last: the resent copies become deliveries (and, without a relay, failed events).
  const resent = await mg.messages.resendEmail(domain, key, 'x@elsewhere.test, Why <y@elsewhere.test>');
  show('resendEmail', resent);
  assert.deepEqual(resent, { status: 200, id: env.INLET_HEADER_ID, message: 'Queued. Thank you.' });
  console.log('SDK storage test: OK');
} catch (err) {
  console.error('SDK storage test FAILED:', err);
  process.exit(1);
}
