// An independent Bayeux server for sfstream's interop test: Faye's NodeAdapter mounted where
// Salesforce serves CometD, plus the two endpoints a Salesforce client also needs: an OAuth
// token endpoint, and /publish to inject events (Faye has no REST publishing of its own).
'use strict';
const http = require('http');
const faye = require('faye');

const timeoutSeconds = Number(process.env.FAYE_TIMEOUT_S || '2');
const bayeux = new faye.NodeAdapter({ mount: '/cometd/62.0', timeout: timeoutSeconds });
let port = 0;

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

const server = http.createServer(async (req, res) => {
  if (req.method === 'POST' && req.url === '/services/oauth2/token') {
    await readBody(req);
    res.writeHead(200, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify({
      access_token: 'faye-token', instance_url: `http://127.0.0.1:${port}`,
      token_type: 'Bearer', issued_at: String(Date.now()), id: 'faye', signature: 'x',
    }));
    return;
  }
  if (req.method === 'POST' && req.url === '/publish') {
    const { channel, data } = JSON.parse(await readBody(req));
    await bayeux.getClient().publish(channel, data);
    res.writeHead(200, { 'Content-Type': 'application/json' });
    res.end('{"published":true}');
    return;
  }
  if (req.method === 'GET' && req.url === '/clients') {
    res.writeHead(200, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify({ subscribed: subscribed.size }));
    return;
  }
  res.writeHead(404);
  res.end();
});

const subscribed = new Set();
bayeux.on('subscribe', (clientId) => subscribed.add(clientId));
bayeux.on('disconnect', (clientId) => subscribed.delete(clientId));
bayeux.attach(server);
server.listen(0, '127.0.0.1', () => {
  port = server.address().port;
  process.stdout.write(JSON.stringify({ port }) + '\n');
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
