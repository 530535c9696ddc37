// Node client check for gigsService, as the Node backend calls it:
// create a gig (camelCase fields, price as a double), search for it by an
// accent-folded word with a price filter, fetch it by id (camelCase alias).
// Usage: node gigs.js <port> <seller id>
'use strict';

const { connect, run } = require('./client');

const [port, seller] = process.argv.slice(2);
const call = connect(port);

run(async () => {
  const created = await call('gigsService.create', [seller, {
    title: 'Node café logo 東京',
    description: 'A logo made for you, ordered through the Node backend.',
    category: 'graphic-design',
    price: 25.5,
    deliveryTime: 2,
    tags: ['node', 'logo'],
  }]);
  const found = await call('gigsService.search',
    ['CAFE 東京', { min_price: 10, max_price: 30, sort: 'price_asc' }, 1, 10]);
  const fetched = await call('gigsService.getById', [created.gig_id]);
  return { created, found, fetched };
});
