// A small TCP proxy in front of the daemon for the retry tests. It forwards each request, reads the
// daemon's complete answer, and then either passes it on, or -- for a call chosen by the test -- destroys
// the client's socket instead (the daemon has done the work; the client never hears of it), or holds the
// answer back (a stalled call).
'use strict';

const net = require('node:net');

/** Splits a byte stream into HTTP/1.1 messages framed by Content-Length (all the daemon and client send). */
class Framer {
  constructor() {
    this.buffer = Buffer.alloc(0);
  }

  push(chunk) {
    this.buffer = Buffer.concat([this.buffer, chunk]);
    const messages = [];
    for (;;) {
      const end = this.buffer.indexOf('\r\n\r\n');
      if (end < 0) break;
      const head = this.buffer.subarray(0, end).toString('latin1');
      const match = /\r\ncontent-length:\s*(\d+)/i.exec(head);
      const total = end + 4 + (match ? Number(match[1]) : 0);
      if (this.buffer.length < total) break;
      messages.push(this.buffer.subarray(0, total));
      this.buffer = this.buffer.subarray(total);
    }
    return messages;
  }
}

function methodName(request) {
  const match = /<methodName>([^<]*)<\/methodName>/.exec(request.toString('utf8'));
  return match ? match[1] : null;
}

/**
 * start(upstreamPort) -> proxy with .port, .requests (every request body seen, as text, in order),
 * .connections, .drop(method, times) and .stall(method), .close().
 */
async function startProxy(upstreamPort) {
  const proxy = {
    requests: [],
    connections: 0,
    dropped: 0,
    rules: new Map(), // method -> { drop: n } | { stall: true }
    sockets: new Set(),
    drop(method, times = 1) {
      this.rules.set(method, { drop: times });
    },
    stall(method) {
      this.rules.set(method, { stall: true });
    },
    calls(method) {
      return this.requests.filter((r) => methodName(Buffer.from(r)) === method);
    },
  };
  const server = net.createServer((client) => {
    proxy.connections += 1;
    const upstream = net.connect(upstreamPort, '127.0.0.1');
    proxy.sockets.add(client);
    proxy.sockets.add(upstream);
    const pending = []; // method of each request forwarded and not yet answered, in order
    const requests = new Framer();
    const responses = new Framer();
    const end = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on('data', (chunk) => {
      for (const message of requests.push(chunk)) {
        const body = message.toString('utf8');
        proxy.requests.push(body);
        pending.push(methodName(message));
      }
      upstream.write(chunk);
    });
    upstream.on('data', (chunk) => {
      for (const message of responses.push(chunk)) {
        const method = pending.shift();
        const rule = proxy.rules.get(method);
        if (rule && rule.drop > 0) {
          rule.drop -= 1;
          proxy.dropped += 1;
          end(); // the daemon answered; the client loses the connection instead of the answer
          return;
        }
        if (rule && rule.stall) return; // never forwarded
        client.write(message);
      }
    });
    client.on('error', end);
    upstream.on('error', end);
    client.on('close', end);
    upstream.on('close', end);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  proxy.port = server.address().port;
  proxy.url = `http://127.0.0.1:${proxy.port}/RPC2`;
  proxy.close = () => new Promise((resolve) => {
    for (const socket of proxy.sockets) socket.destroy();
    server.close(resolve);
  });
  return proxy;
}

module.exports = { startProxy, methodName };
