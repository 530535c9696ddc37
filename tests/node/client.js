// The XML-RPC client the Node backend uses (npm `xmlrpc`), wrapped in a promise.
// Usage: const { connect } = require('./client'); const call = connect(port);
//        const result = await call('ping', []);
'use strict';

const xmlrpc = require('xmlrpc');

function connect(port) {
  const client = xmlrpc.createClient({ host: '127.0.0.1', port: Number(port), path: '/RPC2' });
  return (method, params) => new Promise((resolve, reject) => {
    client.methodCall(method, params, (error, value) => (error ? reject(error) : resolve(value)));
  });
}

// Runs main(), prints its result as one JSON line, exits 1 on any error.
function run(main) {
  main()
    .then((result) => process.stdout.write(JSON.stringify(result) + '\n'))
    .catch((error) => {
      process.stderr.write(String(error && error.stack ? error.stack : error) + '\n');
      process.exit(1);
    });
}

module.exports = { connect, run };
