// Node client check for gigsService, as the Node backend calls it:
// create a gig (camelCase fields, price as a double), search for it by an
// accent-folded word with a price filter, fetch it by id.  Prints one JSON object.
// Usage: node gigs.js <port> <seller id>
'use strict';

const xmlrpc = require('xmlrpc');

const [port, seller] = process.argv.slice(2);
const client = xmlrpc.createClient({ host: '127.0.0.1', port: Number(port), path: '/RPC2' });

function call(method, params) {
  return new Promise((resolve, reject) => {
    client.methodCall(method, params, (error, value) => (error ? reject(error) : resolve(value)));
  });
}

async function main() {
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
  process.stdout.write(JSON.stringify({ created, found, fetched }) + '\n');
}

main().catch((error) => {
  process.stderr.write(String(error && error.stack ? error.stack : error) + '\n');
  process.exit(1);
});
