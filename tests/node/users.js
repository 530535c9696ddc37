// Node client check for usersService, as the Node backend calls it (camelCase
// names): register, log in, verify the access token, try a wrong password and
// a duplicate registration, read the user back.  Prints one JSON object.
// Usage: node users.js <port>
'use strict';

const xmlrpc = require('xmlrpc');

const [port] = process.argv.slice(2);
const client = xmlrpc.createClient({ host: '127.0.0.1', port: Number(port), path: '/RPC2' });

function call(method, params) {
  return new Promise((resolve, reject) => {
    client.methodCall(method, params, (error, value) => (error ? reject(error) : resolve(value)));
  });
}

async function main() {
  const register = await call('usersService.register',
    ['node_user', 'Node.User@Example.com', 'mot de passe sûr', 'freelancer']);
  const login = await call('usersService.login', ['node.user@example.com', 'mot de passe sûr']);
  const verify = await call('usersService.verifyToken', [login.token]);
  const wrong = await call('usersService.login', ['node.user@example.com', 'not the password']);
  const duplicate = await call('usersService.register',
    ['NODE_USER', 'someone@example.com', 'password123', 'client']);
  const byId = await call('usersService.getById', [register.user_id]);
  process.stdout.write(JSON.stringify({ register, login, verify, wrong, duplicate, byId }) + '\n');
}

main().catch((error) => {
  process.stderr.write(String(error && error.stack ? error.stack : error) + '\n');
  process.exit(1);
});
