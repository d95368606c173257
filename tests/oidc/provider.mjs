// A real OpenID Connect provider for Latch's single sign-on tests: panva's oidc-provider on
// loopback, started by a test on a free port and ended with it (it also exits when its standard
// input closes, so a killed test leaves nothing running).
//
// Environment: OIDC_CLIENT_SECRET (the Latch client's secret; never on the command line);
// CONSOLE_REDIRECT_URI (optional: the web console's callback, registered as a redirect URI).
// Prints one line `listening http://127.0.0.1:PORT` once it serves.
//
// Accounts (static): alice (groups dbas, oncall; signs in with a password only), bob (no groups),
// carol (groups dbas; her sign-in shows a second factor: amr ["pwd", "otp"]).
//
// Signing in is not interactive: /interaction/:uid logs in the account last chosen with
// `POST /test/next?account=NAME` and grants what the client asked for. The test drives the
// browser side with plain HTTP requests and a cookie jar.
//
// Misbehaviour on demand, so the tests see Latch refuse a bad ID token through its real
// validation (`POST /test/next?...` parameters, each until changed):
//   rogue_jwks=1   /jwks publishes another key under the signing key's id (signature check fails)
//   wrong_nonce=1  the authorization request's nonce is replaced before the provider reads it
//   id_token_ttl=N ID tokens live N seconds
//   foreign_audience=1  sign-ins are issued to another client ("intruder", same secret): the
//                  authorization request and the code exchange are rewritten to it, so the ID
//                  token Latch receives is for another audience
import http from 'node:http';
import crypto from 'node:crypto';
import Provider from 'oidc-provider';

const secret = process.env.OIDC_CLIENT_SECRET;
const consoleRedirect = process.env.CONSOLE_REDIRECT_URI || '';
if (!secret) {
  console.error('OIDC_CLIENT_SECRET is not set: the test passes the client secret in the environment');
  process.exit(2);
}

const accounts = {
  alice: { groups: ['dbas', 'oncall'], amr: ['pwd'], email: 'alice@example.test' },
  bob: { groups: [], amr: ['pwd'], email: 'bob@example.test' },
  carol: { groups: ['dbas'], amr: ['pwd', 'otp'], email: 'carol@example.test' },
};

const state = {
  account: 'alice', rogueJwks: false, wrongNonce: false, idTokenTtl: 3600, foreignAudience: false,
};

function rsaJwk() {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  return privateKey.export({ format: 'jwk' });
}
const signing = { ...rsaJwk(), kid: 'latch-test-1', alg: 'RS256', use: 'sig' };
const rogue = rsaJwk();
const roguePublic = { kty: rogue.kty, n: rogue.n, e: rogue.e, kid: signing.kid, alg: 'RS256', use: 'sig' };

const server = http.createServer();
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  const provider = new Provider(issuer, {
    clients: ['latch', 'intruder'].map((id) => ({
      client_id: id,
      client_secret: secret,
      // latchctl login's loopback listener (a native client: any port); or, when the test
      // names it (CONSOLE_REDIRECT_URI, https://127.0.0.1:PORT/login/callback), the web
      // console's own callback, which only a web client may use.
      ...(consoleRedirect
        ? { application_type: 'web', redirect_uris: [consoleRedirect] }
        : { application_type: 'native', redirect_uris: ['http://127.0.0.1/callback'] }),
      grant_types: ['authorization_code', 'urn:ietf:params:oauth:grant-type:device_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    })),
    pkce: { required: () => true },
    claims: {
      amr: null,
      openid: ['sub', 'amr'],
      profile: ['preferred_username', 'name'],
      email: ['email'],
      groups: ['groups'],
    },
    // Scope claims go into the ID token itself (Latch reads the ID token, not userinfo).
    conformIdTokenClaims: false,
    features: {
      devInteractions: { enabled: false },
      deviceFlow: { enabled: true },
    },
    ttl: { IdToken: () => state.idTokenTtl },
    jwks: { keys: [signing] },
    cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    async findAccount(ctx, id) {
      const account = accounts[id];
      if (!account) return undefined;
      return {
        accountId: id,
        async claims() {
          return {
            sub: id,
            preferred_username: id,
            name: id,
            email: account.email,
            groups: account.groups,
          };
        },
      };
    },
  });

  provider.use(async (ctx, next) => {
    if (ctx.path === '/test/next' && ctx.method === 'POST') {
      const q = ctx.query;
      if (q.account !== undefined) {
        if (!accounts[q.account]) ctx.throw(400, `no account ${q.account}`);
        state.account = q.account;
      }
      if (q.rogue_jwks !== undefined) state.rogueJwks = q.rogue_jwks === '1';
      if (q.wrong_nonce !== undefined) state.wrongNonce = q.wrong_nonce === '1';
      if (q.id_token_ttl !== undefined) state.idTokenTtl = Number(q.id_token_ttl);
      if (q.foreign_audience !== undefined) state.foreignAudience = q.foreign_audience === '1';
      ctx.body = state;
      return;
    }
    if (ctx.path === '/jwks' && state.rogueJwks) {
      ctx.body = { keys: [roguePublic] };
      return;
    }
    if (state.foreignAudience && ctx.path === '/auth' && ctx.query.client_id) {
      ctx.query = { ...ctx.query, client_id: 'intruder' };
    }
    if (state.foreignAudience && ctx.path === '/token') {
      ctx.req.headers.authorization = `Basic ${Buffer.from(`intruder:${encodeURIComponent(secret)}`).toString('base64')}`;
    }
    if (ctx.path === '/auth' && state.wrongNonce && ctx.query.nonce) {
      ctx.query = { ...ctx.query, nonce: 'forged-by-the-test-provider' };
    }
    if (ctx.path.startsWith('/interaction/') && ctx.method === 'GET') {
      const details = await provider.interactionDetails(ctx.req, ctx.res);
      let result;
      if (details.prompt.name === 'login') {
        const account = accounts[state.account];
        result = { login: { accountId: state.account, amr: account.amr } };
      } else {
        const grant = details.grantId
          ? await provider.Grant.find(details.grantId)
          : new provider.Grant({ accountId: details.session.accountId, clientId: details.params.client_id });
        const missing = details.prompt.details;
        if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
        if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
        if (missing.missingResourceScopes) {
          for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes)) {
            grant.addResourceScope(indicator, scopes.join(' '));
          }
        }
        result = { consent: { grantId: await grant.save() } };
      }
      await provider.interactionFinished(ctx.req, ctx.res, result, { mergeWithLastSubmission: false });
      ctx.respond = false;
      return;
    }
    await next();
  });

  server.on('request', provider.callback());
  console.log(`listening ${issuer}`);
});

process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
