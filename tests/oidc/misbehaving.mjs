// An OpenID provider that misbehaves on purpose, for the broker's relying-party
// tests (SECURITY-CASES.md OIDC-01 … OIDC-12). Built on oauth2-mock-server and
// its hooks; tokens it must forge (alg none, HS256, bad signature, key
// rotation) are signed here with `jose`.
//
//   node misbehaving.mjs --mode wrong-iss      one provider
//   node misbehaving.mjs --all                 one provider per mode
//
// Each provider listens on its own 127.0.0.1 port with its own keys, so tests
// running in parallel do not disturb each other. Some modes answer an
// endpoint themselves (an error, HTML, or never), before the mock server
// sees the request. `GET /stats` tells how often `/jwks` was fetched. For
// each provider a line
//   misbehaving-provider ready MODE http://127.0.0.1:PORT
// goes to stdout (the URL is the issuer). The authorization endpoint answers
// at once with a code (no login form); the token endpoint accepts any client.
// The process exits when stdin closes, so a test that dies takes it along.

import { OAuth2Server, Events } from 'oauth2-mock-server';
import { createServer } from 'node:http';
import { createHmac, createPrivateKey, createPublicKey, generateKeyPairSync, randomBytes, sign } from 'node:crypto';
import { base64url } from 'jose';

const MODES = {
  good: {},
  'wrong-iss': { claims: (p) => { p.iss = 'https://evil.example'; } },
  'wrong-aud': { claims: (p) => { p.aud = 'someone-else'; } },
  'multi-aud': { claims: (p) => { p.aud = [p.aud, 'someone-else']; } },
  'missing-aud': { claims: (p) => { delete p.aud; } },
  'missing-sub': { claims: (p) => { delete p.sub; } },
  'missing-iat': { claims: (p) => { delete p.iat; } },
  'future-iat': { claims: (p) => { p.iat = now() + 86400; } },
  expired: { claims: (p) => { p.exp = now() - 120; p.iat = now() - 300; } },
  'future-nbf': { claims: (p) => { p.nbf = now() + 86400; } },
  'wrong-nonce': { claims: (p) => { p.nonce = 'not-the-nonce'; } },
  'missing-nonce': { claims: (p) => { delete p.nonce; } },
  'alg-none': { forge: (p) => `${b64({ alg: 'none', typ: 'JWT' })}.${b64(p)}.` },
  hs256: { forge: hs256WithPublicKey },
  'bad-sig': { forge: flipSignatureBit },
  'no-kid-one-key': { forge: (p, s) => signWith(s, s.mainKey, p, false) },
  'no-kid-two-keys': { extraKeys: 1, forge: (p, s) => signWith(s, s.mainKey, p, false) },
  'unknown-kid': { forge: (p, s) => signWith(s, newKey(), p, true) },
  rotate: { forge: rotateThenSign },
  'userinfo-sub': { userinfo: (body) => { body.sub = 'someone-else'; } },
  'discovery-issuer': { discovery: (body) => { body.issuer = 'https://evil.example'; } },
  'mix-up': { redirect: (url) => { url.searchParams.set('iss', 'https://evil.example'); } },
  'token-500': { response: (r) => { r.statusCode = 500; r.body = { error: 'server_error' }; } },
  'token-html': { response: (r) => { r.statusCode = 200; r.body = '<html>oops</html>'; } },
  'token-huge': { response: (r) => { r.body = { padding: 'x'.repeat(50 * 1024 * 1024) }; } },
  'token-hang': { endpoints: { '/token': hang } },
  'discovery-500': { endpoints: { '/.well-known/openid-configuration': serverError } },
  'discovery-html': { endpoints: { '/.well-known/openid-configuration': htmlPage } },
  'discovery-hang': { endpoints: { '/.well-known/openid-configuration': hang } },
  'jwks-500': { endpoints: { '/jwks': serverError } },
  'jwks-html': { endpoints: { '/jwks': htmlPage } },
  'jwks-hang': { endpoints: { '/jwks': hang } },
  // The key set is served once (at discovery); the refetch an unknown kid causes fails.
  'refetch-500': {
    forge: (p, s) => signWith(s, newKey(), p, true),
    endpoints: { '/jwks': (res, s) => s.jwksFetches > 1 && serverError(res) },
  },
  // As unknown-kid, on a provider of its own, so its /stats count only one test's fetches.
  'unknown-kid-counted': { forge: (p, s) => signWith(s, newKey(), p, true) },
};

// Endpoint answers: true when the request was taken care of.
function hang() {
  return true;
}

function serverError(res) {
  res.writeHead(500, { 'content-type': 'application/json' }).end('{"error":"server_error"}');
  return true;
}

function htmlPage(res) {
  res.writeHead(200, { 'content-type': 'text/html' }).end('<html><body>maintenance</body></html>');
  return true;
}

function route(req, res, behaviour, state) {
  const path = new URL(req.url, 'http://provider').pathname;
  if (path === '/jwks') state.jwksFetches += 1;
  if (path === '/stats') {
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ jwks_fetches: state.jwksFetches }));
    return;
  }
  if (behaviour.endpoints?.[path]?.(res, state)) return;
  state.server.service.requestHandler(req, res);
}

const now = () => Math.floor(Date.now() / 1000);
const b64 = (json) => base64url.encode(JSON.stringify(json));

// Signing is synchronous (node:crypto): the mock server's hooks are not awaited.
function newKey() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  return { ...jwk, alg: 'RS256', use: 'sig', kid: base64url.encode(randomBytes(9)) };
}

function signWith(_state, jwk, payload, withKid) {
  const header = { alg: 'RS256', typ: 'JWT', ...(withKid ? { kid: jwk.kid } : {}) };
  const input = `${b64(header)}.${b64(payload)}`;
  const key = createPrivateKey({ key: jwk, format: 'jwk' });
  return `${input}.${base64url.encode(sign('RSA-SHA256', Buffer.from(input), key))}`;
}

function rotateThenSign(payload, state) {
  // The provider rotates its signing key just before signing: the relying
  // party has the old key set cached and must refetch it once.
  const fresh = newKey();
  state.server.issuer.keys.add(fresh);
  return signWith(state, fresh, payload, true);
}

function hs256WithPublicKey(payload, state) {
  // The classic key-confusion forgery: HMAC keyed with the provider's public key.
  const pub = createPublicKey({ key: state.mainKey, format: 'jwk' }).export({ type: 'spki', format: 'pem' });
  const input = `${b64({ alg: 'HS256', typ: 'JWT', kid: state.mainKey.kid })}.${b64(payload)}`;
  return `${input}.${base64url.encode(createHmac('sha256', pub).update(input).digest())}`;
}

function flipSignatureBit(payload, state) {
  const [h, p, s] = signWith(state, state.mainKey, payload, true).split('.');
  const sig = base64url.decode(s);
  sig[sig.length - 1] ^= 0x01;
  return `${h}.${p}.${base64url.encode(sig)}`;
}

function isIdToken(payload) {
  return payload.sub === 'johndoe' && payload.scope === undefined;
}

async function start(mode) {
  const behaviour = MODES[mode];
  if (!behaviour) throw new Error(`unknown mode ${mode}; modes: ${Object.keys(MODES).join(', ')}`);
  // The mock server supplies issuer, keys and routes; the listener is ours,
  // so a mode can answer an endpoint itself and hanging requests can be cut.
  const server = new OAuth2Server();
  const state = { server, mainKey: newKey(), jwksFetches: 0 };
  await server.issuer.keys.add(state.mainKey);
  for (let i = 0; i < (behaviour.extraKeys ?? 0); i += 1) await server.issuer.keys.add(newKey());
  server.service.on(Events.BeforeAuthorizeRedirect, (redirect) => {
    behaviour.redirect?.(redirect.url);
  });
  server.service.on(Events.BeforeTokenSigning, (token) => {
    if (isIdToken(token.payload)) {
      token.payload.email = 'alice@example.com';
      token.payload.email_verified = true;
      token.payload.groups = ['ml-team'];
      behaviour.claims?.(token.payload);
    }
  });
  server.service.on(Events.BeforeResponse, (response) => {
    const idToken = response.body?.id_token;
    if (typeof idToken === 'string') {
      const payload = JSON.parse(Buffer.from(idToken.split('.')[1], 'base64url'));
      response.body.id_token = (behaviour.forge ?? ((p) => signWith(state, state.mainKey, p, true)))(payload, state);
    }
    behaviour.response?.(response);
  });
  server.service.on(Events.BeforeUserinfo, (response) => {
    response.body = { ...response.body, email: 'alice@example.com', email_verified: true };
    behaviour.userinfo?.(response.body);
  });
  server.service.on(Events.BeforeWellKnownOpenIdConfiguration, (response) => {
    behaviour.discovery?.(response.body);
  });
  const listener = createServer((req, res) => route(req, res, behaviour, state));
  await new Promise((resolve, reject) => listener.listen(0, '127.0.0.1').once('listening', resolve).once('error', reject));
  server.issuer.url = `http://127.0.0.1:${listener.address().port}`;
  process.stdout.write(`misbehaving-provider ready ${mode} ${server.issuer.url}\n`);
  return listener;
}

const args = process.argv.slice(2);
const modes = args.includes('--all') ? Object.keys(MODES) : [args[args.indexOf('--mode') + 1]];
if (!modes[0] || (args.indexOf('--mode') < 0 && !args.includes('--all'))) {
  process.stderr.write(`usage: node misbehaving.mjs --mode MODE | --all\nmodes: ${Object.keys(MODES).join(' ')}\n`);
  process.exit(2);
}
const servers = [];
for (const mode of modes) servers.push(await start(mode));
process.stdout.write('misbehaving-provider all-ready\n');
process.stdin.resume();
process.stdin.on('end', async () => {
  for (const s of servers) s.closeAllConnections();
  await Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve))));
  process.exit(0);
});
