// The committed declarations (index.d.ts) and method table (methods.json) are what the running daemon
// describes: regenerate them with `npm run generate` when this fails. And they compile with tsc --strict.
'use strict';

const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { spawnSync } = require('node:child_process');
const { test } = require('node:test');
const { createClient } = require('..');
const { fetchDescription, render } = require('../lib/generate');
const { requireDaemon } = require('./helpers');

const ROOT = path.join(__dirname, '..');

test('index.d.ts and methods.json match the daemon (npm run generate)', async () => {
  requireDaemon();
  const client = createClient();
  try {
    const files = render(await fetchDescription(client));
    for (const [name, text] of Object.entries(files)) {
      const committed = fs.readFileSync(path.join(ROOT, name), 'utf8');
      if (committed !== text) {
        const a = committed.split('\n');
        const b = text.split('\n');
        const line = a.findIndex((l, i) => l !== b[i]);
        assert.fail(`${name} differs from the daemon's system.describeMethods at line ${line + 1}:\n`
          + `  committed: ${a[line]}\n  daemon:    ${b[line]}\n`
          + 'regenerate it: start the daemon (make run), then cd clients/node && npm run generate');
      }
    }
  } finally {
    client.close();
  }
});

test('the declarations compile with tsc --strict and describe the real calls', () => {
  const tsc = path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
  const done = spawnSync(process.execPath, [tsc, '-p', path.join(__dirname, 'types')], { encoding: 'utf8' });
  assert.equal(done.status, 0, done.stdout + done.stderr);
});
