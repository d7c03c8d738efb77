// A real OpenID provider (panva/oidc-provider) for Keel's tests.
//
// Started by tests/oidc_provider.py as `node tests/oidc/provider.mjs [--port N]`; it listens on
// 127.0.0.1 (port 0 = ephemeral), then prints exactly one JSON line to stdout,
// {"issuer": "http://127.0.0.1:PORT"}, and nothing else. Diagnostics go to stderr.
// It exits when stdin closes, so a test run that dies hard cannot leave it behind.
//
// Configuration (environment):
//   OIDC_PORT            port when --port is not given (default 0)
//   OIDC_CLIENT_ID       the one confidential client (default keel-test-client)
//   OIDC_CLIENT_SECRET   its secret (client_secret_basic) (default: random, so set it)
//   OIDC_REDIRECT_URIS   JSON array or whitespace/comma separated list of redirect URIs
//   OIDC_ID_TOKEN_ALG    ID token signing alg: ES256 (default), RS256 or PS256
//
// Accounts: any login name signs in; its subject is "sub-" + login (a deterministic
// pairwise identifier, so `sub` differs from the login the way real providers' do),
// with email login@example.test (verified) and name "Login".

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import { parseArgs } from 'node:util';

import Provider from 'oidc-provider';

const HOST = '127.0.0.1';
const SCOPES = 'openid email profile';
const ID_TOKEN_ALGS = new Set(['ES256', 'RS256', 'PS256']);

function fail(message) {
  process.stderr.write(`provider.mjs: ${message}\n`);
  process.exit(2);
}

function parseRedirectUris(raw) {
  if (!raw) return ['http://127.0.0.1/callback'];
  const trimmed = raw.trim();
  const uris = trimmed.startsWith('[') ? JSON.parse(trimmed) : trimmed.split(/[\s,]+/).filter(Boolean);
  if (!Array.isArray(uris) || uris.length === 0 || !uris.every((u) => typeof u === 'string')) {
    fail('OIDC_REDIRECT_URIS must list at least one URI');
  }
  return uris;
}

// A fresh key per start (never the library's development key), so the relying party must really
// fetch the JWKS. Both an EC and an RSA key are published: the RP has to pick the key by `kid`.
function signingKeys() {
  const stamp = Date.now().toString(36);
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' });
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
  return [
    { ...ec, kid: `ec-${stamp}`, use: 'sig', alg: 'ES256' },
    { ...rsa, kid: `rsa-${stamp}`, use: 'sig' },
  ];
}

const { values: args } = parseArgs({ options: { port: { type: 'string' } } });
const port = Number.parseInt(args.port ?? process.env.OIDC_PORT ?? '0', 10);
if (!Number.isInteger(port) || port < 0 || port > 65535) fail(`bad port ${args.port ?? process.env.OIDC_PORT}`);

const clientId = process.env.OIDC_CLIENT_ID || 'keel-test-client';
const clientSecret = process.env.OIDC_CLIENT_SECRET || randomBytes(32).toString('base64url');
const redirectUris = parseRedirectUris(process.env.OIDC_REDIRECT_URIS);
const idTokenAlg = process.env.OIDC_ID_TOKEN_ALG || 'ES256';
if (!ID_TOKEN_ALGS.has(idTokenAlg)) fail(`OIDC_ID_TOKEN_ALG must be one of ${[...ID_TOKEN_ALGS]}`);

// The issuer contains the port, and with port 0 the port is known only after listen: so listen
// first and attach the provider's request handler afterwards.
const server = createServer();
server.listen(port, HOST, () => {
  const issuer = `http://${HOST}:${server.address().port}`;

  const provider = new Provider(issuer, {
    clients: [
      {
        client_id: clientId,
        client_secret: clientSecret,
        redirect_uris: redirectUris,
        grant_types: ['authorization_code'],
        response_types: ['code'],
        token_endpoint_auth_method: 'client_secret_basic',
        id_token_signed_response_alg: idTokenAlg,
        subject_type: 'pairwise',
      },
    ],
    jwks: { keys: signingKeys() },
    cookies: { keys: [randomBytes(32).toString('base64url')] },
    // Confidential clients must use PKCE too (OAuth 2.1 / RFC 9700); oidc-provider only accepts S256.
    pkce: { required: () => true },
    scopes: SCOPES.split(' '),
    claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'] },
    // Put the scope's claims in the ID token even in the code flow, as most providers do; the
    // default (true) would leave them to the userinfo endpoint.
    conformIdTokenClaims: false,
    subjectTypes: ['public', 'pairwise'],
    pairwiseIdentifier: async (ctx, accountId) => `sub-${accountId}`,
    findAccount: async (ctx, login) => ({
      accountId: login,
      claims: async () => ({
        sub: login,
        email: `${login}@example.test`,
        email_verified: true,
        name: login.charAt(0).toUpperCase() + login.slice(1),
      }),
    }),
    // A first-party test client: grant the requested OIDC scopes without a consent screen
    // (the pattern the oidc-provider docs give for skipping consent).
    loadExistingGrant: async (ctx) => {
      const grantId = ctx.oidc.result?.consent?.grantId
        || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
      if (grantId) return ctx.oidc.provider.Grant.find(grantId);
      const grant = new ctx.oidc.provider.Grant({
        clientId: ctx.oidc.client.clientId,
        accountId: ctx.oidc.session.accountId,
      });
      grant.addOIDCScope(SCOPES);
      await grant.save();
      return grant;
    },
    features: {
      devInteractions: { enabled: true },
      // Nothing but the code flow is under test; keep the surface small.
      revocation: { enabled: false },
      introspection: { enabled: false },
    },
    ttl: { AuthorizationCode: 60, AccessToken: 300, IdToken: 300, Interaction: 300, Session: 600, Grant: 600 },
  });

  provider.on('server_error', (ctx, err) => process.stderr.write(`server_error: ${err.stack ?? err}\n`));
  server.on('request', provider.callback());
  process.stdout.write(`${JSON.stringify({ issuer })}\n`);
});
server.on('error', (err) => fail(`cannot listen: ${err.message}`));

function shutdown() {
  server.close();
  server.closeAllConnections();
  process.exit(0);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
// The parent holds our stdin open; EOF means it is gone (or done with us).
process.stdin.on('end', shutdown);
process.stdin.on('error', shutdown);
process.stdin.resume();
