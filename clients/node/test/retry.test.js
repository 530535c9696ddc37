// Retries are safe: the proxy lets the daemon answer a call, then drops the client's connection. The client
// repeats only calls that are safe to repeat (with the key it added), and exactly one object exists afterwards.
// Faults, {success:false} results and timeouts are never repeated; unsafe calls are never repeated.
'use strict';

const assert = require('node:assert/strict');
const { test, before, after } = require('node:test');
const {
  createClient, isRetrySafe, RpcFault, RpcHttpError, RpcTimeoutError, WorkNetError,
} = require('..');
const { requireDaemon, unique } = require('./helpers');
const { startProxy } = require('./proxy');

requireDaemon();
const upstream = new URL(process.env.RPC_SERVER_URL);
const direct = createClient();
let proxy;
let client;
const s = {};

function ok(result) {
  assert.equal(result.success, true, JSON.stringify(result));
  return result;
}

function value(request, tag) {
  const match = new RegExp(`<name>${tag}</name><value><string>([^<]*)</string>`).exec(request)
    || new RegExp(`<name>${tag}</name><value>([^<]*)</value>`).exec(request);
  return match && match[1];
}

function firstString(request) {
  const match = /<param><value><string>([^<]*)<\/string>/.exec(request);
  return match && match[1];
}

before(async () => {
  proxy = await startProxy(Number(upstream.port));
  client = createClient({ url: proxy.url, retryDelay: 20 });
  const tag = unique();
  s.seller = ok(await direct.usersService.register(`rs_${tag}`, `rs.${tag}@example.com`, 'password 123', 'freelancer'));
  s.buyer = ok(await direct.usersService.register(`rb_${tag}`, `rb.${tag}@example.com`, 'password 123', 'client'));
  ok(await direct.categoriesService.create(`Retry ${tag}`, `retry-${tag}`));
  s.gig = ok(await direct.gigsService.create(s.seller.user_id, {
    title: 'A gig for retries', description: 'Used by the retry tests of the Node client.',
    category: `retry-${tag}`, price: 25, deliveryTime: 2,
  })).gig_id;
});

after(async () => {
  client.close();
  direct.close();
  await proxy.close();
});

test('a keyed ordersService.create whose answer is lost is repeated with the same key: one order', async () => {
  proxy.drop('ordersService.create');
  const placed = ok(await client.ordersService.create(s.gig, s.buyer.user_id, 1, 25));
  const sent = proxy.calls('ordersService.create');
  assert.equal(sent.length, 2, 'the client repeated the call once');
  const key = value(sent[0], 'idempotency_key');
  assert.ok(key, 'the client added an idempotency key');
  assert.equal(value(sent[1], 'idempotency_key'), key);
  assert.equal(placed.created, false); // the daemon recognised the repeat
  const orders = ok(await direct.ordersService.getAll({ buyer_id: s.buyer.user_id }));
  assert.equal(orders.total, 1);
  assert.equal(orders.orders[0].id, placed.order_id);
  s.order = placed.order_id;
});

test('paymentsService.create with "" gets a client-chosen id and is repeated safely: one payment', async () => {
  proxy.drop('paymentsService.create');
  const paid = ok(await client.paymentsService.create('', s.order, 25, 'paypal'));
  const sent = proxy.calls('paymentsService.create');
  assert.equal(sent.length, 2);
  assert.equal(firstString(sent[0]), paid.payment_id);
  assert.equal(firstString(sent[1]), paid.payment_id);
  assert.equal(paid.created, false);
  // one live payment per order: a second one would be refused, and the first is the one we hold
  assert.equal(ok(await direct.paymentsService.getStatus(paid.payment_id)).status, 'pending');
  ok(await direct.paymentsService.process(paid.payment_id, 'completed'));
  s.payment = paid.payment_id;
});

test('paymentsService.refund is repeated only with an idempotency key, and refunds once', async () => {
  const safe = isRetrySafe('paymentsService.refund', [s.payment, 5]);
  proxy.drop('paymentsService.refund');
  if (safe) {
    const refund = ok(await client.paymentsService.refund(s.payment, 5));
    assert.equal(proxy.calls('paymentsService.refund').length, 2);
    assert.equal(refund.refunded_total, 5);
  } else {
    // this daemon's refund takes no key: the client must not repeat it
    await assert.rejects(client.paymentsService.refund(s.payment, 5), (error) => error.code === 'ECONNRESET');
    assert.equal(proxy.calls('paymentsService.refund').length, 1);
  }
  assert.equal(ok(await direct.paymentsService.getStatus(s.payment)).refunded_total, 5);
});

test('reviews, messages and notifications creates are repeated with the id the client chose: one each', async () => {
  ok(await direct.ordersService.updateStatus(s.order, 'completed'));
  proxy.drop('reviewsService.create');
  const review = ok(await client.reviewsService.create('', s.gig, 4, { user_id: s.buyer.user_id, order_id: s.order }));
  assert.equal(proxy.calls('reviewsService.create').length, 2);
  assert.equal(ok(await direct.reviewsService.calculateRating(s.gig)).count, 1);
  assert.equal(review.created, false);

  const conversation = ok(await direct.messagesService.startConversation(s.buyer.user_id, s.seller.user_id));
  proxy.drop('messagesService.create');
  ok(await client.messagesService.create('', conversation.conversation_id, s.buyer.user_id, { text: 'Merci !' }));
  assert.equal(proxy.calls('messagesService.create').length, 2);
  assert.equal(ok(await direct.messagesService.getConversation(conversation.conversation_id)).total, 1);

  const other = ok(await direct.usersService.register(`rn_${unique()}`, `rn.${unique()}@example.com`, 'password 123', 'client'));
  proxy.drop('notificationsService.create');
  ok(await client.notificationsService.create('', other.user_id, 'system', { message: 'Bienvenue' }));
  assert.equal(proxy.calls('notificationsService.create').length, 2);
  assert.equal(ok(await direct.notificationsService.getUnreadCount(other.user_id)).count, 1);
});

test('a read is repeated after a lost answer; an unsafe call is not', async () => {
  proxy.drop('categoriesService.get_all');
  ok(await client.categoriesService.get_all(1, 5));
  assert.equal(proxy.calls('categoriesService.get_all').length, 2);

  const slug = `lost-${unique()}`;
  proxy.drop('categoriesService.create');
  await assert.rejects(client.categoriesService.create(`Lost ${slug}`, slug), (error) => {
    assert.equal(error.code, 'ECONNRESET');
    assert.equal(error.method, 'categoriesService.create');
    assert.equal(error.attempts, 1);
    return true;
  });
  assert.equal(proxy.calls('categoriesService.create').length, 1);
  ok(await direct.categoriesService.getBySlug(slug)); // the daemon did it once; the caller knows it may have
});

test('faults and {success:false} results are never repeated', async () => {
  const before = proxy.requests.length;
  await assert.rejects(client.call('usersService.noSuchMethod', []), (error) => {
    assert.ok(error instanceof RpcFault);
    assert.equal(error.faultCode, -32601);
    return true;
  });
  await assert.rejects(client.usersService.getById(), (error) => error instanceof RpcFault && error.faultCode === -32602);
  const failure = await client.usersService.getById('not-an-id');
  assert.deepEqual([failure.success, failure.code, failure.field], [false, 'VALIDATION_ERROR', 'user_id']);
  const strict = client.withOptions({ throwOnFailure: true });
  await assert.rejects(strict.usersService.getById('not-an-id'), (error) => {
    assert.ok(error instanceof WorkNetError);
    assert.deepEqual([error.code, error.field], ['VALIDATION_ERROR', 'user_id']);
    return true;
  });
  await assert.rejects(client.call('gigsService.get_by_id', ['0'.repeat(24)], { throwOnFailure: true }),
    (error) => error instanceof WorkNetError && error.code === 'NOT_FOUND' && error.field === null);
  assert.equal(proxy.requests.length - before, 5, 'one request per call');
});

test('a call that gets no answer in time fails with RpcTimeoutError and is not repeated', async () => {
  proxy.stall('reviewsService.calculate_rating');
  const started = Date.now();
  await assert.rejects(client.call('reviewsService.calculate_rating', [s.gig], { timeout: 300 }), (error) => {
    assert.ok(error instanceof RpcTimeoutError);
    assert.equal(error.code, 'RPC_TIMEOUT');
    return true;
  });
  assert.ok(Date.now() - started < 2000);
  assert.equal(proxy.calls('reviewsService.calculate_rating').length, 1); // a read, yet not repeated
});

test('connections are kept alive', async () => {
  const fresh = createClient({ url: proxy.url });
  const before = proxy.connections;
  for (let i = 0; i < 5; i += 1) ok(await fresh.categoriesService.getAll(1, 1));
  assert.equal(proxy.connections - before, 1);
  fresh.close();
});

test('a refused connection is retried for a read, then reported', async () => {
  const closed = await startProxy(1);
  const url = closed.url;
  await closed.close();
  const nowhere = createClient({ url, retries: 2, retryDelay: 10 });
  await assert.rejects(nowhere.ping(), (error) => {
    assert.equal(error.code, 'ECONNREFUSED');
    assert.equal(error.attempts, 3);
    return true;
  });
  nowhere.close();
});

test('configuration from RPC_HOST / RPC_PORT / RPC_AUTH_TOKEN, and a 401 that says what is wrong', async () => {
  const token = process.env.RPC_AUTH_TOKEN || '';
  const byParts = createClient({ env: { RPC_HOST: upstream.hostname, RPC_PORT: upstream.port, RPC_AUTH_TOKEN: token } });
  assert.equal((await byParts.ping()).status, 'ok');
  assert.equal(byParts.url, `http://${upstream.hostname}:${upstream.port}/RPC2`);
  byParts.close();
  if (!token) return; // the daemon needs no token: nothing to refuse
  for (const [given, word] of [['wrong-token', 'wrong'], ['', 'missing']]) {
    const refused = createClient({ env: { RPC_SERVER_URL: upstream.href, RPC_AUTH_TOKEN: given } });
    await assert.rejects(refused.ping(), (error) => {
      assert.ok(error instanceof RpcHttpError);
      assert.equal(error.status, 401);
      assert.match(error.message, new RegExp(`token is ${word}`));
      assert.ok(!error.message.includes(token));
      return true;
    });
    refused.close();
  }
  // HTTP Basic with the token as password, from the URL
  const basic = createClient({ env: { RPC_SERVER_URL: `http://node:${encodeURIComponent(token)}@${upstream.host}/RPC2` } });
  assert.equal((await basic.ping()).status, 'ok');
  assert.ok(!basic.url.includes(token));
  basic.close();
});
