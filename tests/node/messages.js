// Node client check for messagesService, as the Node backend calls it:
// start a conversation, send a message, read the recipient's unread count,
// mark the message read, read the count again.  Prints one JSON object.
// Usage: node messages.js <port> <sender id> <recipient id>
'use strict';

const xmlrpc = require('xmlrpc');

const [port, sender, recipient] = process.argv.slice(2);
const client = xmlrpc.createClient({ host: '127.0.0.1', port: Number(port), path: '/RPC2' });

function call(method, params) {
  return new Promise((resolve, reject) => {
    client.methodCall(method, params, (error, value) => (error ? reject(error) : resolve(value)));
  });
}

async function main() {
  const start = await call('messagesService.startConversation', [sender, recipient]);
  const create = await call('messagesService.create',
    ['', start.conversation_id, sender, { text: 'Bonjour depuis Node 東京 🎉' }]);
  const unread = await call('messagesService.getUnreadCount', [recipient]);
  const marked = await call('messagesService.markAsRead', [create.message_id, recipient]);
  const after = await call('messagesService.getUnreadCount', [recipient]);
  process.stdout.write(JSON.stringify({ start, create, unread, marked, after }) + '\n');
}

main().catch((error) => {
  process.stderr.write(String(error && error.stack ? error.stack : error) + '\n');
  process.exit(1);
});
