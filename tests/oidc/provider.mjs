// A real OpenID provider (the certified `oidc-provider` package) for
// Palisade's sign-in tests.
//
//   node provider.mjs [--port 0]
//
// Prints `oidc-provider ready http://127.0.0.1:PORT` on stdout once it
// listens; that URL is the issuer. Exits when stdin closes.
//
// Test users (password = name + "-pw"): alice (groups: ml-team), bob (none).
// Clients are confidential (client_secret_basic), PKCE S256 required, consent
// skipped (first party). Because every test broker has its own port, clients
// are registered by the test through a small admin API on the same port:
//
//   POST /admin/clients  {"client_id","client_secret","redirect_uris":[…]}
//   POST /admin/users/NAME  {"groups":[…], "name":"…"}  set a user's groups and, if given, the display name
//                                                 (the `name` claim, any text); creates NAME, password NAME-pw, if new
//   POST /admin/rotate                            new signing key, same issuer
//
// The login form lives at the interaction URL `/interaction/UID`.

import http from 'node:http';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import Provider from 'oidc-provider';

const USERS = {
  alice: { password: 'alice-pw', email: 'alice@example.com', name: 'Alice Example', groups: ['ml-team'] },
  bob: { password: 'bob-pw', email: 'bob@example.com', name: 'Bob Example', groups: [] },
};

const store = new Map();

class MemoryAdapter {
  constructor(model) { this.model = model; }
  key(id) { return `${this.model}:${id}`; }
  async upsert(id, payload, expiresIn) {
    store.set(this.key(id), { payload, expires: expiresIn ? Date.now() + expiresIn * 1000 : undefined });
    if (payload.grantId) store.set(`grant:${payload.grantId}:${this.key(id)}`, true);
    if (payload.uid) store.set(`uid:${this.model}:${payload.uid}`, id);
    if (payload.userCode) store.set(`usercode:${this.model}:${payload.userCode}`, id);
  }
  async find(id) {
    const found = store.get(this.key(id));
    if (!found || (found.expires && found.expires < Date.now())) return undefined;
    return found.payload;
  }
  async findByUid(uid) { const id = store.get(`uid:${this.model}:${uid}`); return id ? this.find(id) : undefined; }
  async findByUserCode(code) { const id = store.get(`usercode:${this.model}:${code}`); return id ? this.find(id) : undefined; }
  async consume(id) { const found = store.get(this.key(id)); if (found) found.payload.consumed = Math.floor(Date.now() / 1000); }
  async destroy(id) { store.delete(this.key(id)); }
  async revokeByGrantId(grantId) {
    for (const k of [...store.keys()]) {
      if (k.startsWith(`grant:${grantId}:`)) { store.delete(k.slice(`grant:${grantId}:`.length)); store.delete(k); }
    }
  }
}

function signingKey() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), use: 'sig', alg: 'RS256', kid: randomBytes(8).toString('hex') };
}

function configuration(keys) {
  return {
    adapter: MemoryAdapter,
    jwks: { keys },
    clients: [],
    pkce: { required: () => true },
    features: { devInteractions: { enabled: false } },
    claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name', 'preferred_username', 'groups'] },
    scopes: ['openid', 'email', 'profile', 'offline_access'],
    ttl: { AccessToken: 600, AuthorizationCode: 60, IdToken: 600, Interaction: 600, Session: 600, Grant: 600 },
    interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
    cookies: { keys: [randomBytes(32).toString('hex')] },
    async findAccount(_ctx, id) {
      const user = USERS[id];
      if (!user) return undefined;
      return {
        accountId: id,
        async claims() {
          return { sub: id, email: user.email, email_verified: true, name: user.name, preferred_username: id, groups: user.groups };
        },
      };
    },
    // First-party client: grant the requested scopes without a consent screen.
    async loadExistingGrant(ctx) {
      const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
      if (grantId) return ctx.oidc.provider.Grant.find(grantId);
      const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
      grant.addOIDCScope('openid email profile');
      await grant.save();
      return grant;
    },
  };
}

const escape = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function loginForm(uid, message) {
  return `<!doctype html><title>Sign in</title><form method="post" action="/interaction/${escape(uid)}/login">`
    + `<p>${escape(message)}</p><input name="username"><input name="password" type="password">`
    + '<button type="submit">Sign in</button></form>';
}

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Buffer.concat(chunks).toString();
}

function send(res, status, type, body) {
  res.writeHead(status, { 'content-type': type });
  res.end(body);
}

let provider;

async function interaction(req, res, url) {
  const [, , uid, action] = url.pathname.split('/');
  if (req.method === 'GET' && !action) {
    await provider.interactionDetails(req, res);
    return send(res, 200, 'text/html', loginForm(uid, 'Sign in to the test provider'));
  }
  if (req.method === 'POST' && action === 'login') {
    const form = new URLSearchParams(await readBody(req));
    const name = form.get('username');
    if (!USERS[name] || USERS[name].password !== form.get('password')) {
      return send(res, 200, 'text/html', loginForm(uid, 'Wrong username or password'));
    }
    return provider.interactionFinished(req, res, { login: { accountId: name } }, { mergeWithLastSubmission: false });
  }
  return send(res, 404, 'text/plain', 'not found');
}

async function admin(req, res, url) {
  const body = req.method === 'POST' ? JSON.parse((await readBody(req)) || '{}') : {};
  if (url.pathname === '/admin/clients') {
    const client = {
      client_id: body.client_id,
      client_secret: body.client_secret,
      redirect_uris: body.redirect_uris,
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: ['authorization_code'],
      response_types: ['code'],
    };
    await new MemoryAdapter('Client').upsert(body.client_id, client);
    return send(res, 200, 'application/json', JSON.stringify({ ok: true }));
  }
  const user = url.pathname.match(/^\/admin\/users\/([a-z]+)$/);
  if (user) {
    // Unknown names become new people (password NAME-pw), for tests and the benchmark that need many.
    USERS[user[1]] ??= { password: `${user[1]}-pw`, email: `${user[1]}@example.com`, name: user[1], groups: [] };
    USERS[user[1]].groups = body.groups ?? [];
    // Any text, markup included: tests check the broker renders an IdP's claims as text.
    if (typeof body.name === 'string') USERS[user[1]].name = body.name;
    return send(res, 200, 'application/json', JSON.stringify({ ok: true }));
  }
  if (url.pathname === '/admin/rotate') {
    provider = makeProvider(provider.issuer, [signingKey()]);
    return send(res, 200, 'application/json', JSON.stringify({ ok: true }));
  }
  return send(res, 404, 'text/plain', 'not found');
}

function makeProvider(issuer, keys) {
  const p = new Provider(issuer, configuration(keys));
  p.on('server_error', (_ctx, err) => process.stderr.write(`oidc-provider error: ${err.stack}\n`));
  return p;
}

const args = process.argv.slice(2);
const port = Number(args[args.indexOf('--port') + 1] ?? 0) || 0;
const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, 'http://127.0.0.1');
  try {
    if (url.pathname.startsWith('/interaction/')) return await interaction(req, res, url);
    if (url.pathname.startsWith('/admin/')) return await admin(req, res, url);
    return provider.callback()(req, res);
  } catch (err) {
    process.stderr.write(`test provider: ${err.stack}\n`);
    if (!res.headersSent) send(res, 500, 'text/plain', 'error');
  }
});
server.listen(port, '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  provider = makeProvider(issuer, [signingKey()]);
  process.stdout.write(`oidc-provider ready ${issuer}\n`);
});
process.stdin.resume();
process.stdin.on('end', () => process.exit(0));
