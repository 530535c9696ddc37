// Node client check for the foundation: ping, then categoriesService.create and
// getBySlug (the camelCase alias the Node backend uses), with a non-ASCII name.
// Usage: node categories.js <port>
'use strict';

const { connect, run } = require('./client');

const call = connect(process.argv[2]);

run(async () => {
  const ping = await call('ping', []);
  const created = await call('categoriesService.create', ['Café Zoë 東京', 'node-cafe', 'Made from Node']);
  const fetched = await call('categoriesService.getBySlug', ['node-cafe']);
  const missing = await call('categoriesService.get_by_id', ['not-an-id']);
  return { ping, created, fetched, missing };
});
