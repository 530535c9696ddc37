// worknet-rpc-client: a Promise client for the WorkNet RPC daemon, on top of the npm `xmlrpc` package.
//
//   const { createClient } = require('worknet-rpc-client');
//   const client = createClient();                       // RPC_SERVER_URL or RPC_HOST/RPC_PORT, RPC_AUTH_TOKEN
//   const r = await client.usersService.register('ana', 'ana@example.com', 'secret-pass', 'client');
//   const same = await client.call('usersService.register', ['ana', 'ana@example.com', 'secret-pass', 'client']);
//
// Retries: only after a network failure (the connection was refused, reset or closed before an answer
// arrived) and only for calls that are safe to repeat -- reads, calls idempotent by contract, and creates or
// refunds that carry a client-chosen id or idempotency key (the client adds one where the caller gave none).
// Never after a fault, an HTTP error, a timeout or a {success: false} result.
'use strict';

const crypto = require('node:crypto');
const http = require('node:http');
const https = require('node:https');
const xmlrpc = require('xmlrpc');

const described = loadDescription();

function loadDescription() {
  try {
    return require('./methods.json'); // written by `npm run generate` from system.describeMethods
  } catch (error) {
    if (error.code !== 'MODULE_NOT_FOUND') throw error;
    return { methods: [] };
  }
}

// -- errors -------------------------------------------------------------------------------------

/** An XML-RPC fault (a protocol error: unknown method, wrong parameters, internal error). */
class RpcFault extends Error {
  constructor(method, faultCode, faultString) {
    super(`${method}: XML-RPC fault ${faultCode}: ${faultString}`);
    this.name = 'RpcFault';
    this.method = method;
    this.faultCode = faultCode;
    this.faultString = faultString;
  }
}

/** A {success: false} result, thrown only when the client was asked to (throwOnFailure). */
class WorkNetError extends Error {
  constructor(method, result) {
    super(`${method}: ${result.code}: ${result.error}`);
    this.name = 'WorkNetError';
    this.method = method;
    this.code = result.code;
    this.field = result.field === undefined ? null : result.field;
    this.result = result;
  }
}

/** An HTTP answer that is not an XML-RPC response (401, 413, 5xx from a proxy, ...). */
class RpcHttpError extends Error {
  constructor(method, status, message) {
    super(message);
    this.name = 'RpcHttpError';
    this.method = method;
    this.status = status;
    this.code = status === 401 ? 'RPC_UNAUTHORIZED' : `HTTP_${status}`;
  }
}

/** No answer within the call's timeout (not retried: the server may still be working on it). */
class RpcTimeoutError extends Error {
  constructor(method, timeout) {
    super(`${method}: no answer within ${timeout} ms`);
    this.name = 'RpcTimeoutError';
    this.method = method;
    this.code = 'RPC_TIMEOUT';
    this.timeout = timeout;
  }
}

// -- which calls may be repeated ------------------------------------------------------------------

const NETWORK_CODES = new Set([
  'ECONNRESET', 'ECONNREFUSED', 'ECONNABORTED', 'EPIPE', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH',
  'EAI_AGAIN', 'ENOTFOUND', 'ERR_STREAM_PREMATURE_CLOSE',
]);

// Calls that only read, or that the contract makes idempotent (API.md: start_conversation is idempotent
// for a pair; marking something read twice leaves it read).
const READ = /^(get_|get$|search$|calculate_|verify_token$)/;
const IDEMPOTENT = new Set([
  'ping', 'system.listMethods', 'system.methodHelp', 'system.methodSignature', 'system.describeMethods',
  'messagesService.start_conversation', 'messagesService.mark_as_read', 'notificationsService.mark_as_read',
]);

// Creates and refunds made safe to repeat by a key the client fills in when the caller gave none.
// `param` is looked up by name in the daemon's description (methods.json), so a daemon whose method has
// no such parameter simply gets no key (and the call is not retried).
const KEYED = {
  'ordersService.create': { param: 'options', key: 'idempotency_key' },
  'paymentsService.refund': { param: 'options', key: 'idempotency_key' },
  'paymentsService.create': { param: 'payment_id' },
  'reviewsService.create': { param: 'review_id' },
  'messagesService.create': { param: 'message_id' },
  'notificationsService.create': { param: 'notification_id' },
};

const METHODS = new Map(); // every name (snake_case and camelCase) -> its description
for (const m of described.methods) for (const name of m.names) METHODS.set(name, m);

/** A fresh 24-hex id shaped like a MongoDB ObjectId (4 bytes of seconds, 8 random bytes). */
function newId() {
  const seconds = Math.floor(Date.now() / 1000).toString(16).padStart(8, '0');
  return seconds + crypto.randomBytes(8).toString('hex');
}

/** Params with keys filled in, and whether the call may be repeated. */
function prepare(method, params) {
  const m = METHODS.get(method);
  if (!m) return { params, safe: false };
  const short = m.name.slice(m.name.lastIndexOf('.') + 1);
  if (IDEMPOTENT.has(m.name) || (m.service && READ.test(short))) return { params, safe: true };
  const rule = KEYED[m.name];
  const index = rule ? m.params.findIndex((p) => p.name === rule.param) : -1;
  if (index < 0) return { params, safe: false };
  const out = params.slice();
  while (out.length <= index) out.push(null);
  if (rule.key) {
    const given = out[index];
    if (given === null) out[index] = { [rule.key]: crypto.randomUUID() };
    else if (isPlainObject(given)) {
      if (given[rule.key] === undefined || given[rule.key] === null || given[rule.key] === '') {
        out[index] = { ...given, [rule.key]: crypto.randomUUID() };
      }
    } else return { params, safe: false }; // not a struct: the server will say so
  } else if (out[index] === null || out[index] === '') {
    out[index] = newId();
  } else if (typeof out[index] !== 'string') {
    return { params, safe: false };
  }
  // trailing nils the caller did not send stay unsent
  while (out.length > params.length && out[out.length - 1] === null) out.pop();
  return { params: out, safe: true };
}

function isPlainObject(value) {
  return value !== null && typeof value === 'object' && !Array.isArray(value) && !(value instanceof Date)
    && !Buffer.isBuffer(value);
}

/** Dates go on the wire as the API's ISO-8601 UTC strings (npm xmlrpc would send local time without a zone). */
function toWire(value) {
  if (value === undefined) return null;
  if (value instanceof Date) return value.toISOString();
  if (Array.isArray(value)) return value.map(toWire);
  if (isPlainObject(value)) {
    const out = {};
    for (const [k, v] of Object.entries(value)) if (v !== undefined) out[k] = toWire(v);
    return out;
  }
  return value;
}

// -- configuration --------------------------------------------------------------------------------

function resolveUrl(options, env) {
  if (options.url) return new URL(options.url);
  if (env.RPC_SERVER_URL) return new URL(env.RPC_SERVER_URL);
  let host = options.host || env.RPC_HOST || '127.0.0.1';
  if (host === '0.0.0.0') host = '127.0.0.1';
  if (host === '::') host = '::1';
  const port = Number(options.port || env.RPC_PORT || 8000);
  return new URL(`http://${host.includes(':') ? `[${host}]` : host}:${port}/RPC2`);
}

function isNetworkFailure(error) {
  if (!error || error.faultCode !== undefined || error.res) return false;
  return NETWORK_CODES.has(error.code) || error.message === 'socket hang up';
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// -- the client -----------------------------------------------------------------------------------

class Transport {
  constructor(options, env) {
    const url = resolveUrl(options, env);
    this.secure = url.protocol === 'https:';
    if (!this.secure && url.protocol !== 'http:') throw new Error(`unsupported RPC_SERVER_URL protocol ${url.protocol}`);
    this.where = `${url.protocol}//${url.host}${url.pathname}`; // never the credentials
    const token = options.token !== undefined ? options.token : (env.RPC_AUTH_TOKEN || '');
    const headers = { 'User-Agent': 'worknet-rpc-client' };
    if (token) headers.Authorization = `Bearer ${token}`;
    else if (url.password) {
      const user = decodeURIComponent(url.username);
      headers.Authorization = 'Basic '
        + Buffer.from(`${user}:${decodeURIComponent(url.password)}`).toString('base64');
    }
    const Agent = this.secure ? https.Agent : http.Agent;
    this.agent = options.agent || new Agent({ keepAlive: true, maxSockets: options.maxSockets || 16 });
    this.ownsAgent = !options.agent;
    this.base = {
      host: url.hostname.replace(/^\[|\]$/g, ''),
      port: Number(url.port || (this.secure ? 443 : 80)),
      path: url.pathname + url.search,
      headers,
      agent: this.agent,
      ...(options.tls || {}),
    };
  }

  /** One HTTP round trip; rejects with the raw error (classified by the caller). */
  once(method, params, timeout) {
    return new Promise((resolve, reject) => {
      const controller = new AbortController();
      let settled = false;
      const finish = (fn, value) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        fn(value);
      };
      const timer = setTimeout(() => {
        finish(reject, new RpcTimeoutError(method, timeout));
        controller.abort();
      }, timeout);
      const options = { ...this.base, headers: { ...this.base.headers }, signal: controller.signal };
      const client = this.secure ? xmlrpc.createSecureClient(options) : xmlrpc.createClient(options);
      try {
        client.methodCall(method, params, (error, value) => (error ? finish(reject, error) : finish(resolve, value)));
      } catch (error) {
        finish(reject, error);
      }
    });
  }

  close() {
    if (this.ownsAgent) this.agent.destroy();
  }
}

const DEFAULTS = { timeout: 30000, retries: 2, retryDelay: 100, throwOnFailure: false };

class WorkNetClient {
  /**
   * @param {object} [options] url, host, port, token, timeout (ms per attempt), retries, retryDelay (ms),
   *   throwOnFailure, maxSockets, agent, tls (extra https options), env (instead of process.env)
   */
  constructor(options = {}, transport = null) {
    this.transport = transport || new Transport(options, options.env || process.env);
    this.options = { ...DEFAULTS };
    for (const key of Object.keys(DEFAULTS)) if (options[key] !== undefined) this.options[key] = options[key];
    this.url = this.transport.where;
    for (const m of described.methods) {
      const service = m.service ? (this[m.service] ||= {}) : this;
      for (const name of m.names) {
        const short = name.slice(name.lastIndexOf('.') + 1);
        service[short] = (...params) => this.call(name, params);
      }
    }
  }

  /** The same connection pool with other defaults: client.withOptions({ timeout: 2000 }).gigsService.search(...) */
  withOptions(options) {
    const derived = new WorkNetClient({ ...this.options, ...options }, this.transport);
    return derived;
  }

  /** Call `method` with `params`; options: timeout, retries, retryDelay, throwOnFailure. */
  async call(method, params = [], options = {}) {
    if (typeof method !== 'string') throw new TypeError('method must be a string');
    if (!Array.isArray(params)) throw new TypeError('params must be an array');
    const o = { ...this.options };
    for (const key of Object.keys(DEFAULTS)) if (options[key] !== undefined) o[key] = options[key];
    const args = params.map(toWire);
    while (args.length && args[args.length - 1] === null && params[args.length - 1] === undefined) args.pop();
    const { params: sent, safe } = prepare(method, args);
    for (let attempt = 0; ; attempt += 1) {
      let value;
      try {
        value = await this.transport.once(method, sent, o.timeout);
      } catch (error) {
        if (safe && attempt < o.retries && isNetworkFailure(error)) {
          const delay = Math.min(2000, o.retryDelay * 2 ** attempt);
          await sleep(delay / 2 + Math.random() * (delay / 2));
          continue;
        }
        throw this.explain(method, error, attempt + 1);
      }
      if (o.throwOnFailure && isPlainObject(value) && value.success === false) throw new WorkNetError(method, value);
      return value;
    }
  }

  explain(method, error, attempts) {
    if (error instanceof RpcTimeoutError) return error;
    if (error.faultCode !== undefined) return new RpcFault(method, error.faultCode, error.faultString);
    const status = error.res && error.res.statusCode;
    if (status === 401) {
      return new RpcHttpError(method, 401, `${method}: HTTP 401 from ${this.url}: the RPC token is `
        + `${this.transport.base.headers.Authorization ? 'wrong' : 'missing'} (set RPC_AUTH_TOKEN or the token option)`);
    }
    if (status && status !== 200) {
      const text = String(error.body || '').split('\n')[0].slice(0, 200);
      return new RpcHttpError(method, status, `${method}: HTTP ${status} from ${this.url}${text ? `: ${text}` : ''}`);
    }
    error.method = method;
    error.attempts = attempts;
    if (error.message && !error.message.startsWith(method)) error.message = `${method}: ${error.message} (${this.url})`;
    return error;
  }

  /** Close the kept-alive connections. */
  close() {
    this.transport.close();
  }
}

function createClient(options) {
  return new WorkNetClient(options);
}

/** Whether the client would retry `method` (after filling in its key) -- exported for tests and tools. */
function isRetrySafe(method, params = []) {
  return prepare(method, params.map(toWire)).safe;
}

module.exports = {
  createClient,
  WorkNetClient,
  RpcFault,
  WorkNetError,
  RpcHttpError,
  RpcTimeoutError,
  isRetrySafe,
  prepare,
  newId,
  methods: described.methods,
};
