// A real browser talks MQTT to ringmq over WebSocket: start ringmq ($RINGMQ_BIN) with a
// WebSocket listener, serve a page using MQTT.js (its browser bundle, so the browser's own
// WebSocket carries the bytes) from 127.0.0.1, open it in headless Chromium, subscribe,
// publish at QoS 1 and wait for the message to come back to the page.
//
// usage: RINGMQ_BIN=target/debug/ringmq node tests/browser/mqtt_ws.test.mjs
// Chromium: $CHROMIUM, else /usr/bin/chromium (Debian's package; scripts/test.sh installs it).
// Prints the page's result as JSON; exits 0 only when the message came back intact, from
// the browser, at QoS 1.

import { spawn } from 'node:child_process';
import http from 'node:http';
import fs from 'node:fs';
import net from 'node:net';
import { createRequire } from 'node:module';
import { chromium } from 'playwright-core';

const TIMEOUT_MS = 20000;
const binary = process.env.RINGMQ_BIN;
if (!binary) {
  console.error('set RINGMQ_BIN to the ringmq binary');
  process.exit(2);
}

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
    server.on('error', reject);
  });
}

async function waitForPort(port, deadline) {
  while (Date.now() < deadline) {
    const open = await new Promise((resolve) => {
      const socket = net.connect(port, '127.0.0.1', () => { socket.destroy(); resolve(true); });
      socket.on('error', () => resolve(false));
    });
    if (open) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`ringmq's WebSocket port ${port} never opened`);
}

const [mqttPort, wsPort] = [await freePort(), await freePort()];
const broker = spawn(binary, ['--bind', '127.0.0.1', '--port', String(mqttPort),
  '--ws-bind', `127.0.0.1:${wsPort}`, '--log-level', 'warn', '--ring-entries', '1024',
  '--recv-buffers', '256'], { stdio: ['ignore', 'ignore', 'inherit'] });
const url = `ws://127.0.0.1:${wsPort}/mqtt`;

const require = createRequire(import.meta.url);
const bundle = fs.readFileSync(require.resolve('mqtt/dist/mqtt.min'));
const page = `<!doctype html><meta charset="utf-8"><title>ringmq browser test</title>
<script src="/mqtt.min.js"></script>
<script>
window.roundTrip = (url) => new Promise((resolve, reject) => {
  const expected = 'hello from ' + navigator.userAgent.split(' ').find((w) => w.startsWith('HeadlessChrome') || w.startsWith('Chrome'));
  const client = mqtt.connect(url, { protocolVersion: 4, reconnectPeriod: 0, connectTimeout: 5000,
    clientId: 'browser-' + Math.random().toString(16).slice(2, 10) });
  const timer = setTimeout(() => { client.end(true); reject(new Error('no message in time')); }, ${TIMEOUT_MS - 5000});
  client.on('error', (error) => { clearTimeout(timer); reject(error); });
  client.on('connect', () => {
    client.subscribe('browser/#', { qos: 1 }, (error, granted) => {
      if (error) { reject(error); return; }
      client.publish('browser/echo', expected, { qos: 1 });
    });
  });
  client.on('message', (topic, payload, packet) => {
    clearTimeout(timer);
    const text = new TextDecoder().decode(payload);
    client.end(false, {}, () => resolve({ topic, payload: text, qos: packet.qos, expected,
      transport: typeof WebSocket, ok: text === expected }));
  });
});
</script>`;

const server = http.createServer((request, response) => {
  if (request.url === '/mqtt.min.js') {
    response.writeHead(200, { 'content-type': 'text/javascript' });
    response.end(bundle);
  } else {
    response.writeHead(200, { 'content-type': 'text/html' });
    response.end(page);
  }
});
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const pageUrl = `http://127.0.0.1:${server.address().port}/`;

let browser;
let status = 1;
try {
  await waitForPort(wsPort, Date.now() + TIMEOUT_MS);
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox'],
    timeout: TIMEOUT_MS,
  });
  const tab = await browser.newPage();
  tab.on('console', (message) => console.error('page:', message.text()));
  await tab.goto(pageUrl);
  const result = await tab.evaluate((target) => window.roundTrip(target), url);
  console.log(JSON.stringify(result));
  const fromChrome = result.payload.includes('Chrome/');
  status = result.ok && fromChrome && result.topic === 'browser/echo' && result.qos === 1 ? 0 : 1;
  console.log(status === 0 ? 'ok - MQTT.js in Chromium round-tripped over ringmq\'s WebSocket listener'
    : 'browser WebSocket test FAILED');
} catch (error) {
  console.error('browser WebSocket test FAILED:', error.message);
} finally {
  if (browser) await browser.close();
  server.close();
  broker.kill('SIGKILL');
}
process.exit(status);
