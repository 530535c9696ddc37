// Every method system.listMethods lists, called through the client at least once (snake_case and camelCase
// names), as the Node backend would: a seller, a buyer, a category, gigs, orders, payments, a refund, a review,
// a conversation and notifications -- with nil, non-ASCII text, money and dates on the way.
'use strict';

const assert = require('node:assert/strict');
const { test, after } = require('node:test');
const { recordingClient, unique, ISO } = require('./helpers');

const { client, seen } = recordingClient();
after(() => client.close());

const TEXT = 'Café Zoë 東京 🎉 — ½';
const PASSWORD = 'correct horse 1';
const s = {}; // state shared by the steps below, which run in order

function ok(result) {
  assert.equal(result.success, true, JSON.stringify(result));
  return result;
}

test('introspection and ping', async () => {
  const ping = await client.ping();
  assert.equal(ping.status, 'ok');
  assert.equal(ping.mongodb, 'connected');
  const names = await client.system.listMethods();
  assert.ok(names.includes('usersService.getById') && names.includes('usersService.get_by_id'));
  assert.match(await client.system.methodHelp('usersService.register'), /username/);
  assert.deepEqual(await client.system.methodSignature('categoriesService.create'),
    [['struct', 'string', 'string', 'string']]);
  const described = await client.system.describeMethods();
  assert.equal(described.find((m) => m.name === 'categoriesService.create').params[2].optional, true);
  const batch = await client.system.multicall([
    { methodName: 'ping', params: [] },
    { methodName: 'no.such', params: [] },
  ]);
  assert.equal(batch[0][0].status, 'ok');
  assert.equal(batch[1].faultCode, -32601);
});

test('usersService', async () => {
  const tag = unique();
  s.seller = ok(await client.usersService.register(`sel_${tag}`, `sel.${tag}@example.com`, PASSWORD, 'freelancer'));
  s.buyer = ok(await client.usersService.register(`buy_${tag}`, `buy.${tag}@example.com`, PASSWORD, 'client'));
  const spare = ok(await client.call('usersService.register', [`sp1_${tag}`, `sp1.${tag}@example.com`, PASSWORD, 'client']));
  const spare2 = ok(await client.usersService.register(`sp2_${tag}`, `sp2.${tag}@example.com`, PASSWORD, 'client'));
  assert.match(s.seller.user.createdAt, ISO);

  const login = ok(await client.usersService.login(`buy.${tag}@example.com`, PASSWORD));
  assert.equal(login.user.id, s.buyer.user_id);
  const wrong = await client.usersService.login(`buy.${tag}@example.com`, 'wrong password');
  assert.equal(wrong.code, 'UNAUTHORIZED');

  assert.equal(ok(await client.usersService.get_by_id(s.seller.user_id)).user.username, `sel_${tag}`);
  assert.equal(ok(await client.usersService.getById(s.buyer.user_id)).user.role, 'client');
  const page = ok(await client.usersService.get_all(1, 10, { search: `sel_${tag}` }));
  assert.equal(page.total, 1);
  const nilPage = ok(await client.usersService.getAll(null, null, { search: `buy_${tag}` })); // nil = default
  assert.equal(nilPage.limit, 20);

  const bio = ok(await client.usersService.update_profile(s.seller.user_id, { bio: TEXT, country: 'Ísland' }));
  assert.equal(bio.user.bio, TEXT);
  assert.equal(ok(await client.usersService.updateProfile(s.seller.user_id, { skills: ['logo', 'typographie'] }))
    .user.bio, TEXT);

  assert.equal(ok(await client.usersService.verify_token(login.token)).user_id, s.buyer.user_id);
  const verified = ok(await client.usersService.verifyToken(s.seller.token));
  assert.match(verified.expires_at, ISO);
  const rotated = ok(await client.usersService.refresh_token(login.refresh_token));
  ok(await client.usersService.refreshToken(rotated.refresh_token));

  ok(await client.usersService.change_password(spare.user_id, PASSWORD, 'another password 2'));
  ok(await client.usersService.changePassword(spare.user_id, 'another password 2', PASSWORD));
  assert.equal(ok(await client.usersService.delete_user(spare.user_id)).deleted, true);
  ok(await client.usersService.deleteUser(spare2.user_id));
  assert.equal((await client.usersService.getById(spare.user_id)).code, 'NOT_FOUND');
});

test('categoriesService', async () => {
  const tag = unique();
  s.slug = `design-${tag}`;
  const made = ok(await client.categoriesService.create(`${TEXT} ${tag}`, s.slug, 'Logos, affiches'));
  s.category = made.category_id;
  assert.equal(made.category.name, `${TEXT} ${tag}`);
  const spare = ok(await client.categoriesService.create(`Spare ${tag}`, `spare-${tag}`)); // optional left out
  ok(await client.categoriesService.update(s.category, { description: 'Identité visuelle' }));
  assert.ok(ok(await client.categoriesService.get_all(1, 100)).total >= 2);
  ok(await client.categoriesService.getAll());
  assert.equal(ok(await client.categoriesService.get_by_id(s.category)).category.slug, s.slug);
  assert.equal(ok(await client.categoriesService.getById(s.category)).category.description, 'Identité visuelle');
  assert.equal(ok(await client.categoriesService.get_by_slug(s.slug)).category.id, s.category);
  ok(await client.categoriesService.getBySlug(s.slug));
  ok(await client.categoriesService.get_stats(s.category));
  ok(await client.categoriesService.getStats(s.category));
  assert.equal(ok(await client.categoriesService.delete(spare.category_id)).deleted, true);
  const bad = await client.categoriesService.create('x', 'Not A Slug');
  assert.equal(bad.code, 'VALIDATION_ERROR');
  assert.ok(bad.field);
});

test('gigsService', async () => {
  const gig = ok(await client.gigsService.create(s.seller.user_id, {
    title: `Logo design ${TEXT}`,
    description: 'Je dessine votre logo, trois propositions et des retouches illimitées.',
    category: s.slug,
    price: 49.99,
    deliveryTime: 3,
    tags: ['logo', '東京'],
  }));
  s.gig = gig.gig_id;
  assert.equal(gig.gig.price, 49.99);
  const spare = ok(await client.gigsService.create(s.seller.user_id, {
    title: 'Spare gig to delete', description: 'A gig that is deleted by the test.', category: s.slug,
    price: '5', deliveryTime: 1,
  }));
  assert.equal(ok(await client.gigsService.update(s.gig, { price: '59.50' })).gig.price, 59.5);
  assert.equal(ok(await client.gigsService.get_by_id(s.gig)).gig.seller.id, s.seller.user_id);
  ok(await client.gigsService.getById(s.gig));
  assert.equal(ok(await client.gigsService.get_by_user(s.seller.user_id, 1, 10)).total, 2);
  ok(await client.gigsService.getByUser(s.seller.user_id));
  const found = ok(await client.gigsService.search('東京 logo', { category: s.slug }, 1, 10));
  assert.deepEqual(found.gigs.map((g) => g.id), [s.gig]);
  ok(await client.gigsService.update_rating(s.gig, null)); // nil: recompute from the reviews
  const folded = ok(await client.gigsService.updateRating(spare.gig_id, 4));
  assert.equal(folded.reviewCount, 1);
  assert.equal(ok(await client.gigsService.delete(spare.gig_id)).deleted, true);
});

test('ordersService and paymentsService: money, dates, keys added by the client', async () => {
  const started = new Date(Date.now() - 60 * 1000);
  const placed = ok(await client.ordersService.create(s.gig, s.buyer.user_id, 2, 119.0)); // 2 x 59.50
  s.order = placed.order_id;
  assert.equal(placed.order.totalPrice, 119);
  assert.match(placed.order.createdAt, ISO);

  const fees = ok(await client.paymentsService.calculate_fees(19.99));
  const cents = (x) => Math.round(x * 100);
  assert.equal(cents(fees.platform_fee) + cents(fees.seller_amount), cents(19.99));
  assert.deepEqual([fees.platform_fee, fees.seller_amount], [4, 15.99]);
  const fees2 = ok(await client.paymentsService.calculateFees('100.00'));
  assert.deepEqual([fees2.platform_fee, fees2.seller_amount], [20, 80]);

  const payment = ok(await client.paymentsService.create('', s.order, 119, 'stripe')); // the client picks the id
  assert.match(payment.payment_id, /^[0-9a-f]{24}$/);
  s.payment = payment.payment_id;
  const processed = ok(await client.paymentsService.process(s.payment, 'completed'));
  assert.equal(processed.order_status, 'in_progress');
  assert.equal(ok(await client.paymentsService.get_status(s.payment)).status, 'completed');
  assert.equal(ok(await client.paymentsService.getStatus(s.payment)).amount, 119);
  const refund = ok(await client.paymentsService.refund(s.payment, '10.05'));
  assert.equal(refund.refunded_total, 10.05);

  ok(await client.ordersService.update_status(s.order, 'disputed', 'Livraison en retard — 東京'));
  const done = ok(await client.ordersService.updateStatus(s.order, 'completed'));
  assert.deepEqual([done.previous_status, done.new_status], ['disputed', 'completed']);
  assert.equal(done.order.statusHistory.at(-1).to, 'completed');
  ok(await client.ordersService.get_by_id(s.order));
  assert.equal(ok(await client.ordersService.getById(s.order)).order.status, 'completed');

  // Date objects go out as ISO-8601 UTC strings
  const window = { buyer_id: s.buyer.user_id, from: started, to: new Date(Date.now() + 60 * 1000) };
  assert.equal(ok(await client.ordersService.get_all(window, 1, 10)).total, 1);
  const before = { buyer_id: s.buyer.user_id, to: started };
  assert.equal(ok(await client.ordersService.getAll(before)).total, 0);
  ok(await client.ordersService.get_analytics(s.buyer.user_id, 'month'));
  ok(await client.ordersService.getAnalytics(s.seller.user_id, null)); // nil period: the default

  const second = ok(await client.ordersService.create(s.gig, s.buyer.user_id, 1, 59.5, null));
  const cancelled = ok(await client.ordersService.cancel(second.order_id, 'Changé d’avis'));
  assert.equal(cancelled.order.status, 'cancelled');
  assert.equal(cancelled.refund, null); // nil on the wire

  const seller = ok(await client.usersService.get_stats(s.seller.user_id)).stats;
  assert.equal(seller.completedOrders, 1);
  assert.equal(seller.totalEarnings, 87.16); // (119 - 10.05 refunded) minus the 20 % fee, to the cent
  ok(await client.usersService.getStats(s.buyer.user_id));
});

test('reviewsService', async () => {
  const review = ok(await client.reviewsService.create('', s.gig, 5,
    { user_id: s.buyer.user_id, order_id: s.order, comment: `Très bien ${TEXT}` }));
  assert.equal(review.review.comment, `Très bien ${TEXT}`);
  assert.equal(review.gig_rating, 5);
  ok(await client.reviewsService.update(review.review_id, { rating: 4 }));
  assert.equal(ok(await client.reviewsService.calculate_rating(s.gig)).rating, 4);
  const rating = ok(await client.reviewsService.calculateRating(s.gig));
  assert.equal(rating.distribution['4'], 1);
  assert.equal(ok(await client.reviewsService.delete(review.review_id)).deleted, true);
});

test('messagesService', async () => {
  const conversation = ok(await client.messagesService.start_conversation(s.seller.user_id, s.buyer.user_id));
  const again = ok(await client.messagesService.startConversation(s.buyer.user_id, s.seller.user_id));
  assert.equal(again.conversation_id, conversation.conversation_id);
  const message = ok(await client.messagesService.create('', conversation.conversation_id, s.seller.user_id,
    { text: `Bonjour ${TEXT}` }));
  assert.equal(message.message.text, `Bonjour ${TEXT}`);
  assert.equal(ok(await client.messagesService.get_conversation(conversation.conversation_id, 1, 5)).total, 1);
  ok(await client.messagesService.getConversation(conversation.conversation_id));
  assert.equal(ok(await client.messagesService.get_unread_count(s.buyer.user_id)).count, 1);
  assert.equal(ok(await client.messagesService.mark_as_read(message.message_id, s.buyer.user_id)).updated, true);
  ok(await client.messagesService.markAsRead(message.message_id, s.buyer.user_id));
  assert.equal(ok(await client.messagesService.getUnreadCount(s.buyer.user_id)).count, 0);
});

test('notificationsService', async () => {
  const note = ok(await client.notificationsService.create('', s.buyer.user_id, 'system',
    { message: `Bienvenue ${TEXT}`, link: '/welcome' }));
  assert.equal(note.notification.message, `Bienvenue ${TEXT}`);
  const unread = ok(await client.notificationsService.get_unread_count(s.buyer.user_id));
  assert.ok(unread.count >= 1 && unread.by_type.system >= 1);
  assert.equal(ok(await client.notificationsService.mark_as_read(note.notification_id)).updated, true);
  ok(await client.notificationsService.markAsRead(note.notification_id));
  ok(await client.notificationsService.getUnreadCount(s.seller.user_id));
  const bulk = ok(await client.notificationsService.send_bulk([s.buyer.user_id, s.seller.user_id, 'nope'],
    'system', `Maintenance ${TEXT}`, null));
  assert.equal(bulk.notifications_sent, 2);
  assert.deepEqual(bulk.invalid_ids, ['nope']);
  ok(await client.notificationsService.sendBulk([s.seller.user_id], 'system', 'Hello', '/news'));
  // the category is in use by an active gig
  assert.equal((await client.categoriesService.delete(s.category)).code, 'INVALID_STATE');
});

test('every listed method was called through the client', async () => {
  const listed = await client.system.listMethods();
  const missing = listed.filter((name) => !seen.has(name));
  assert.deepEqual(missing, [], `not called: ${missing.join(', ')}`);
  const unlisted = [...seen].filter((name) => !listed.includes(name));
  assert.deepEqual(unlisted, []);
});
