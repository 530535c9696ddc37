#!/usr/bin/env node
// `npm run generate`: rewrite methods.json and index.d.ts from a running daemon's system.describeMethods.
// The daemon is found like the client finds it: RPC_SERVER_URL, or RPC_HOST/RPC_PORT, and RPC_AUTH_TOKEN.
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const { createClient } = require('..');
const { fetchDescription, render } = require('../lib/generate');

async function main() {
  const client = createClient();
  try {
    const files = render(await fetchDescription(client));
    for (const [name, text] of Object.entries(files)) {
      fs.writeFileSync(path.join(__dirname, '..', name), text);
      process.stdout.write(`wrote ${name} from ${client.url}\n`);
    }
  } finally {
    client.close();
  }
}

main().catch((error) => {
  process.stderr.write(`${error.message}\n`);
  process.exit(1);
});
