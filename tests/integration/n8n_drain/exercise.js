// Exercise docker/n8n/drain-hooks.js on a plain node HTTP server, as n8n main's would be:
// a webhook still being answered when SIGTERM comes, then new ones on the same keep-alive
// connection and on a new one; and answers no workflow wrote (n8n's own fallback 200s), which
// must not reach Meta as a 2xx. Prints what each got, as JSON.
'use strict';
const http = require('http');
const hooks = require('/hooks/drain-hooks.js');

// As n8n answers: a workflow's Respond to Webhook node sets the answer header (with express's
// setHeader, or in writeHead's headers); n8n's fallbacks do not.
const server = http.createServer((req, res) => {
  const delay = req.url.startsWith('/webhook/slow') ? 1500 : 0;
  const path = req.url.split('?')[0];
  setTimeout(() => {
    if (path === '/webhook/fallback') {
      res.setHeader('Content-Type', 'application/json');
      res.end('{"message":"Workflow executed successfully but no data was returned"}');
    } else if (path === '/webhook/fallback-empty') {
      res.writeHead(200, 'OK');
      res.end();
    } else if (path === '/webhook/refusal') {
      res.writeHead(403, { 'Content-Type': 'text/plain' });
      res.end('forbidden');
    } else if (path === '/webhook/in-writehead') {
      res.writeHead(200, { 'X-Restobot-Answer': 'workflow', 'Content-Type': 'text/plain' });
      res.end('EVENT_RECEIVED');
    } else if (path.startsWith('/webhook/')) {
      res.setHeader('X-Restobot-Answer', 'workflow');
      res.end('EVENT_RECEIVED');
    } else {
      res.end('EVENT_RECEIVED');
    }
  }, delay);
});

function get(agent, path) {
  return new Promise((resolve) => {
    http.get({ host: '127.0.0.1', port: server.address().port, path, agent }, (res) => {
      let body = '';
      res.on('data', (chunk) => (body += chunk));
      res.on('end', () => resolve([res.statusCode, body.trim(), res.headers['x-restobot-answer'] || null,
        res.headers['retry-after'] || null]));
    }).on('error', (error) => resolve([0, error.code]));
  });
}

server.listen(0, '127.0.0.1', async () => {
  await hooks.n8n.ready[0]({ server });
  const keepAlive = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const out = { before: await get(keepAlive, '/webhook/fast') };
  out.in_writehead = await get(keepAlive, '/webhook/in-writehead');
  out.fallback = await get(keepAlive, '/webhook/fallback?hub.verify_token=secret-in-the-query');
  out.fallback_empty = await get(keepAlive, '/webhook/fallback-empty');
  out.refusal = await get(keepAlive, '/webhook/refusal');
  out.refused_count = hooks.testing.state().refused;
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
