// A real OAuth 2.0 / OpenID provider (oauth2-mock-server) on 127.0.0.1, on a port the system
// picks; prints "READY <issuer url>" once it serves. Its /authorize answers at once (no login
// form) with a code for "johndoe"; /userinfo insists on the access token it issued.
import { OAuth2Server } from "oauth2-mock-server";

const server = new OAuth2Server();
await server.issuer.keys.generate("RS256");
const issued = new Set();
server.service.on("beforeResponse", (response) => {
  if (response.body && response.body.access_token) issued.add(response.body.access_token);
});
server.service.on("beforeUserinfo", (response, req) => {
  const auth = req.headers["authorization"] || "";
  const token = auth.startsWith("Bearer ") ? auth.slice(7) : "";
  if (!issued.has(token)) {
    response.statusCode = 401;
    response.body = { error: "invalid_token" };
    return;
  }
  response.body = { sub: "johndoe", username: "johndoe", email: "johndoe@example.invalid" };
});
await server.start(0, "127.0.0.1");
server.issuer.url = `http://127.0.0.1:${server.address().port}`;
console.log(`READY ${server.issuer.url}`);
process.stdin.resume();
process.stdin.on("end", () => server.stop().then(() => process.exit(0)));
