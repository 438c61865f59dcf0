// Drives a real OIDC provider (npm oauth2-mock-server) for the tests (tartarus_auth::harness): it serves
// discovery and JWKS over HTTP on 127.0.0.1; this script only tells it, through one JSON
// command per stdin line, which tokens to sign and when to rotate keys. One JSON reply per
// stdout line.
//   {"cmd":"token","claims":{...},"expires_in":N,"kid":"..."}  -> {"token":"..."}
//   {"cmd":"rotate","alg":"RS256"}  -> {"kid":"..."}  (a new key, published next to the old)
//   {"cmd":"retire","kid":"..."}    -> {"kids":[...]} (the provider restarts on the same port
//                                       without that key: it is no longer published)
//   {"cmd":"kids"}                  -> {"kids":[...]}
import readline from 'node:readline';

const { OAuth2Server } = await import(process.env.OAUTH2_MOCK_SERVER);

let server = new OAuth2Server();
const first = await server.issuer.keys.generate(process.env.FIRST_ALG || 'RS256');
let signing = first.kid;
await server.start(Number(process.env.PORT || 0), '127.0.0.1');
const port = server.address().port;
const issuer = `http://127.0.0.1:${port}`;
server.issuer.url = issuer;

const reply = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const kids = () => server.issuer.keys.toJSON().map((k) => k.kid);
reply({ ready: true, issuer, kid: first.kid });

const rl = readline.createInterface({ input: process.stdin });
for await (const line of rl) {
  try {
    const msg = JSON.parse(line);
    if (msg.cmd === 'token') {
      const token = await server.issuer.buildToken({
        kid: msg.kid || signing,
        expiresIn: msg.expires_in ?? 3600,
        scopesOrTransform: (_header, payload) => Object.assign(payload, msg.claims || {}),
      });
      reply({ token });
    } else if (msg.cmd === 'rotate') {
      const key = await server.issuer.keys.generate(msg.alg || 'RS256');
      signing = key.kid;
      reply({ kid: key.kid });
    } else if (msg.cmd === 'retire') {
      const keep = server.issuer.keys.toJSON(true).filter((k) => k.kid !== msg.kid);
      await server.stop();
      server = new OAuth2Server();
      for (const k of keep) await server.issuer.keys.add(k);
      await server.start(port, '127.0.0.1');
      server.issuer.url = issuer;
      if (signing === msg.kid) signing = keep.length ? keep[keep.length - 1].kid : undefined;
      reply({ kids: kids() });
    } else if (msg.cmd === 'kids') {
      reply({ kids: kids() });
    } else {
      reply({ error: `unknown command ${msg.cmd}` });
    }
  } catch (e) {
    reply({ error: String(e && e.stack || e) });
  }
}
await server.stop();
