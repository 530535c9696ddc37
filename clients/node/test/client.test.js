// The client's own rules, without a daemon: which calls it may repeat, the keys it adds, what goes on the wire.
'use strict';

const assert = require('node:assert/strict');
const { test } = require('node:test');
const { createClient, isRetrySafe, prepare, newId, methods } = require('..');

test('reads and calls idempotent by contract are safe to repeat; other writes are not', () => {
  for (const name of ['ping', 'usersService.getById', 'usersService.get_all', 'gigsService.search',
    'paymentsService.calculateFees', 'system.listMethods', 'messagesService.startConversation']) {
    assert.equal(isRetrySafe(name, []), true, name);
  }
  for (const name of ['usersService.register', 'usersService.login', 'usersService.refreshToken',
    'categoriesService.create', 'ordersService.updateStatus', 'ordersService.cancel', 'paymentsService.process',
    'gigsService.update_rating', 'notificationsService.sendBulk', 'no.such.method']) {
    assert.equal(isRetrySafe(name, []), false, name);
  }
});

test('keyed creates get a key or id where the caller gave none, and keep the caller\'s', () => {
  const options = { idempotency_key: '' };
  const a = prepare('ordersService.create', ['g', 'b', 1, 10, options]);
  assert.equal(a.safe, true);
  assert.match(a.params[4].idempotency_key, /^[0-9a-f-]{36}$/);
  assert.equal(options.idempotency_key, '', 'the caller\'s object is not changed');
  const b = prepare('ordersService.create', ['g', 'b', 1, 10]);
  assert.equal(b.params.length, 5);
  const c = prepare('ordersService.create', ['g', 'b', 1, 10, { idempotency_key: 'mine' }]);
  assert.equal(c.params[4].idempotency_key, 'mine');
  assert.equal(prepare('ordersService.create', ['g', 'b', 1, 10, 'not a struct']).safe, false);
  const d = prepare('paymentsService.create', ['', 'o', 10, 'stripe']);
  assert.match(d.params[0], /^[0-9a-f]{24}$/);
  assert.equal(prepare('reviewsService.create', ['a'.repeat(24), 'g', 5]).params[0], 'a'.repeat(24));
  assert.equal(prepare('notificationsService.create', [null, 'u', 'system']).params[0].length, 24);
  assert.notEqual(newId(), newId());
});

test('every method the daemon describes is on the client, under both names', () => {
  const client = createClient({ env: {} });
  for (const m of methods) {
    for (const name of m.names) {
      const [service, short] = name.includes('.') ? name.split('.') : [null, name];
      const holder = service ? client[service] : client;
      assert.equal(typeof holder[short], 'function', name);
    }
  }
  assert.equal(client.url, 'http://127.0.0.1:8000/RPC2');
  client.close();
});

test('configuration: RPC_SERVER_URL wins over RPC_HOST/RPC_PORT; credentials never in client.url', () => {
  const a = createClient({ env: { RPC_SERVER_URL: 'http://u:secret@127.0.0.1:9/x', RPC_HOST: 'h', RPC_PORT: '1' } });
  assert.equal(a.url, 'http://127.0.0.1:9/x');
  a.close();
  const b = createClient({ env: { RPC_HOST: '0.0.0.0', RPC_PORT: '8123' } });
  assert.equal(b.url, 'http://127.0.0.1:8123/RPC2');
  b.close();
});
