// Exercise docker/n8n/drain-hooks.js on a plain node HTTP server, as n8n main's would be:
// a webhook still being answered when SIGTERM comes, then new ones on the same keep-alive
// connection and on a new one. Prints what each got, as JSON.
'use strict';
const http = require('http');
const hooks = require('/hooks/drain-hooks.js');

const server = http.createServer((req, res) => {
  const delay = req.url.startsWith('/webhook/slow') ? 1500 : 0;
  setTimeout(() => res.end('EVENT_RECEIVED'), delay);
});

function get(agent, path) {
  return new Promise((resolve) => {
    http.get({ host: '127.0.0.1', port: server.address().port, path, agent }, (res) => {
      let body = '';
      res.on('data', (chunk) => (body += chunk));
      res.on('end', () => resolve([res.statusCode, body.trim()]));
    }).on('error', (error) => resolve([0, error.code]));
  });
}

server.listen(0, '127.0.0.1', async () => {
  await hooks.n8n.ready[0]({ server });
  const keepAlive = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const out = { before: await get(keepAlive, '/webhook/fast') };
  const slow = get(new http.Agent(), '/webhook/slow');
  await new Promise((resolve) => setTimeout(resolve, 300));
  process.kill(process.pid, 'SIGTERM');
  await new Promise((resolve) => setTimeout(resolve, 50));
  out.after_sigterm_keepalive = await get(keepAlive, '/webhook/fast');
  out.after_sigterm_new = await get(new http.Agent(), '/webhook/fast');
  out.after_sigterm_healthz = await get(new http.Agent(), '/healthz');
  const started = Date.now();
  await hooks.n8n.stop[0]();
  out.stop_waited_ms = Date.now() - started;
  out.in_flight = await slow;
  out.state = hooks.testing.state();
  out.hook_names = Object.keys(hooks);
  console.log(JSON.stringify(out));
  process.exit(0);
});
