// Node client check for messagesService, as the Node backend calls it:
// start a conversation, send a message, read the recipient's unread count,
// mark the message read, read the count again.  Prints one JSON object.
// Usage: node messages.js <port> <sender id> <recipient id>
'use strict';

const { connect, run } = require('./client');

const [port, sender, recipient] = process.argv.slice(2);
const call = connect(port);

async function main() {
  const start = await call('messagesService.startConversation', [sender, recipient]);
  const create = await call('messagesService.create',
    ['', start.conversation_id, sender, { text: 'Bonjour depuis Node 東京 🎉' }]);
  const unread = await call('messagesService.getUnreadCount', [recipient]);
  const marked = await call('messagesService.markAsRead', [create.message_id, recipient]);
  const after = await call('messagesService.getUnreadCount', [recipient]);
  return { start, create, unread, marked, after };
}

run(main);
