// A real browser talks MQTT to ringmq over WebSocket: a page using MQTT.js (its browser
// bundle, so the browser's own WebSocket carries the bytes) is served from 127.0.0.1,
// opened in headless Chromium, subscribes, publishes at QoS 1 and waits for its message.
//
// usage: node mqtt_ws_round_trip.mjs ws://127.0.0.1:PORT/mqtt
// Prints the page's result as JSON and exits 0 only when the message came back intact.
// Chromium: $CHROMIUM, else /usr/bin/chromium (Debian's package; scripts/test.sh installs it).

import http from 'node:http';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import { chromium } from 'playwright-core';

const TIMEOUT_MS = 20000;
const url = process.argv[2];
if (!url || !url.startsWith('ws')) {
  console.error('usage: node mqtt_ws_round_trip.mjs ws://HOST:PORT/PATH');
  process.exit(2);
}

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
  status = result.ok ? 0 : 1;
} catch (error) {
  console.error('browser test failed:', error.message);
} finally {
  if (browser) await browser.close();
  server.close();
}
process.exit(status);
