// Shared by the tests: a client on the daemon named by the environment (RPC_SERVER_URL, RPC_AUTH_TOKEN),
// started by tests/test_node_client.py, and a unique suffix for names that must be unique.
'use strict';

const crypto = require('node:crypto');
const { createClient, methods } = require('..');

const DECLARED = new Map();
for (const m of methods) for (const name of m.names) DECLARED.set(name, m);

function requireDaemon() {
  if (!process.env.RPC_SERVER_URL) {
    throw new Error('RPC_SERVER_URL is not set: run these tests through tests/test_node_client.py (make test)');
  }
}

/** A client that records every method name it calls and checks each envelope against methods.json. */
function recordingClient(options = {}) {
  requireDaemon();
  const client = createClient(options);
  const seen = new Set();
  const call = client.call.bind(client);
  client.call = async (method, params, callOptions) => {
    seen.add(method);
    const result = await call(method, params, callOptions);
    checkShape(method, result);
    return result;
  };
  return { client, seen };
}

/** A success envelope has exactly the declared fields (optional ones may be absent); a failure its four. */
function checkShape(method, result) {
  const m = DECLARED.get(method);
  if (!m || !m.returns.envelope) return;
  if (result.success === false) {
    const extra = Object.keys(result).filter((k) => !['success', 'error', 'code', 'field'].includes(k));
    if (extra.length) throw new Error(`${method}: undeclared failure fields ${extra}`);
    return;
  }
  const declared = new Set(m.returns.fields.map((f) => f.name));
  const undeclared = Object.keys(result).filter((k) => k !== 'success' && !declared.has(k));
  const missing = m.returns.fields.filter((f) => !f.optional && !(f.name in result)).map((f) => f.name);
  if (undeclared.length || missing.length) {
    throw new Error(`${method}: result fields differ from @signature(returns=...): `
      + `undeclared ${JSON.stringify(undeclared)}, missing ${JSON.stringify(missing)}`);
  }
}

function unique(prefix = 'n') {
  return `${prefix}${crypto.randomBytes(4).toString('hex')}`;
}

const ISO = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;

module.exports = { recordingClient, requireDaemon, unique, ISO, checkShape };
