// Node client check for usersService, as the Node backend calls it (camelCase
// names): register, log in, verify the access token, try a wrong password and
// a duplicate registration, read the user back.  Prints one JSON object.
// Usage: node users.js <port>
'use strict';

const { connect, run } = require('./client');

const [port] = process.argv.slice(2);
const call = connect(port);

async function main() {
  const register = await call('usersService.register',
    ['node_user', 'Node.User@Example.com', 'mot de passe sûr', 'freelancer']);
  const login = await call('usersService.login', ['node.user@example.com', 'mot de passe sûr']);
  const verify = await call('usersService.verifyToken', [login.token]);
  const wrong = await call('usersService.login', ['node.user@example.com', 'not the password']);
  const duplicate = await call('usersService.register',
    ['NODE_USER', 'someone@example.com', 'password123', 'client']);
  const byId = await call('usersService.getById', [register.user_id]);
  return { register, login, verify, wrong, duplicate, byId };
}

run(main);
