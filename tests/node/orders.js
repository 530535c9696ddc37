// Node client check for ordersService and paymentsService, as the Node backend calls them:
// place an order (price as a double, an idempotency key), retry the same call, pay it with a
// client-chosen payment id (sent twice, as a retry would), process the payment, read it back
// through the camelCase aliases, ask for the fee split, and refund part of it with an idempotency
// key, sent twice (the Node client retries a call that timed out).
// Usage: node orders.js <port> <gig id> <buyer id> <price>
'use strict';

const crypto = require('crypto');
const { connect, run } = require('./client');

const [port, gig, buyer, price] = process.argv.slice(2);
const call = connect(port);

run(async () => {
  const total = Number(price) * 2;
  const options = { idempotency_key: 'node-checkout-1' };
  const placed = await call('ordersService.create', [gig, buyer, 2, total, options]);
  const replayed = await call('ordersService.create', [gig, buyer, 2, total, options]);
  const paymentId = crypto.randomBytes(12).toString('hex');
  const paid = await call('paymentsService.create', [paymentId, placed.order_id, total, 'stripe']);
  const paidAgain = await call('paymentsService.create', [paymentId, placed.order_id, total, 'stripe']);
  const processed = await call('paymentsService.process', [paymentId, 'completed']);
  const status = await call('paymentsService.getStatus', [paymentId]);
  const order = await call('ordersService.getById', [placed.order_id]);
  const fees = await call('paymentsService.calculateFees', [total]);
  const bad = await call('paymentsService.process', [paymentId, 'completed']);
  const refundOptions = { idempotency_key: 'node-refund-1' };
  const refund = await call('paymentsService.refund', [paymentId, 10, refundOptions]);
  const refundAgain = await call('paymentsService.refund', [paymentId, 10, refundOptions]);
  return { placed, replayed, paymentId, paid, paidAgain, processed, status, order, fees, bad, refund, refundAgain };
});
