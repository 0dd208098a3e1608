// The live dashboard in headless Chromium: start ringmq ($RINGMQ_BIN) with its HTTP listener
// and an admin token, connect a few MQTT clients and publish, open /dashboard#token=... , wait
// until the page says "live" and its charts have data, check the DOM (tiles show the broker's
// figures, three charts drawn), take a screenshot and check the PNG itself: its size, its
// dimensions, and that it is not blank (decoded here: many distinct colours, a good share of
// pixels off the background).
//
// usage: RINGMQ_BIN=target/debug/ringmq node tests/browser/dashboard.test.mjs [screenshot.png]
// Chromium: $CHROMIUM, else /usr/bin/chromium (Debian's package; scripts/test.sh installs it).
// Exits 0 only when every check passed; prints what it saw either way.

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { chromium } from 'playwright-core';

const TOKEN = 'dashboard-test-token-0123456789';
const CLIENTS = 3;
const VIEWPORT = { width: 1280, height: 800 };
const TIMEOUT_MS = 30000;
const screenshotPath = process.argv[2] || path.join(os.tmpdir(), `ringmq-dashboard-${process.pid}.png`);

function fail(message) {
  console.error(`dashboard test FAILED: ${message}`);
  process.exitCode = 1;
  throw new Error(message);
}

function check(condition, message) {
  if (!condition) fail(message);
  console.log(`ok - ${message}`);
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

// MQTT 3.1.1 packets, encoded by hand (a test client we did not take from the broker).
function remainingLength(length) {
  const bytes = [];
  do {
    let byte = length % 128;
    length = Math.floor(length / 128);
    if (length > 0) byte |= 0x80;
    bytes.push(byte);
  } while (length > 0);
  return Buffer.from(bytes);
}
const utf8 = (text) => { const b = Buffer.from(text); return Buffer.concat([Buffer.from([b.length >> 8, b.length & 255]), b]); };
const packet = (type, body) => Buffer.concat([Buffer.from([type]), remainingLength(body.length), body]);
const connect = (clientId) => packet(0x10, Buffer.concat([utf8('MQTT'), Buffer.from([4, 2, 0, 60]), utf8(clientId)]));
const publish = (topic, payload) => packet(0x30, Buffer.concat([utf8(topic), Buffer.from(payload)]));

// Connects, waits for CONNACK 0, publishes `count` QoS 0 messages; the socket stays open.
function mqttClient(port, clientId, count) {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1', () => socket.write(connect(clientId)));
    socket.once('data', (data) => {
      if (data[0] !== 0x20 || data[3] !== 0) { reject(new Error(`bad CONNACK ${data.toString('hex')}`)); return; }
      for (let i = 0; i < count; i++) socket.write(publish('dash/test', `message ${i}`));
      resolve(socket);
    });
    socket.on('error', reject);
  });
}

async function waitForHttp(url, broker) {
  const deadline = Date.now() + 10000;
  while (Date.now() < deadline) {
    if (broker.exitCode !== null) fail(`ringmq exited with ${broker.exitCode}`);
    try { if ((await fetch(url)).ok) return; } catch { /* not up yet */ }
    await new Promise((r) => setTimeout(r, 50));
  }
  fail(`${url} did not answer within 10 s`);
}

// PNG decoding for 8-bit RGB or RGBA, non-interlaced (what Chromium writes): inflate the
// IDAT stream and undo each row's filter; returns { width, height, channels, pixels }.
function decodePng(file) {
  const signature = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  if (!file.subarray(0, 8).equals(signature)) fail('the screenshot is not a PNG');
  let offset = 8, width = 0, height = 0, channels = 0;
  const idat = [];
  while (offset < file.length) {
    const length = file.readUInt32BE(offset);
    const type = file.toString('ascii', offset + 4, offset + 8);
    const data = file.subarray(offset + 8, offset + 8 + length);
    if (type === 'IHDR') {
      width = data.readUInt32BE(0); height = data.readUInt32BE(4);
      const [depth, colour, , , interlace] = data.subarray(8, 13);
      if (depth !== 8 || interlace !== 0 || ![2, 6].includes(colour)) fail(`unexpected PNG format ${depth}/${colour}/${interlace}`);
      channels = colour === 6 ? 4 : 3;
    } else if (type === 'IDAT') idat.push(data);
    offset += 12 + length;
  }
  const raw = zlib.inflateSync(Buffer.concat(idat));
  const stride = width * channels;
  const pixels = Buffer.alloc(height * stride);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)];
    for (let x = 0; x < stride; x++) {
      const value = raw[y * (stride + 1) + 1 + x];
      const a = x >= channels ? pixels[y * stride + x - channels] : 0;
      const b = y > 0 ? pixels[(y - 1) * stride + x] : 0;
      const c = x >= channels && y > 0 ? pixels[(y - 1) * stride + x - channels] : 0;
      let predictor = 0;
      if (filter === 1) predictor = a;
      else if (filter === 2) predictor = b;
      else if (filter === 3) predictor = (a + b) >> 1;
      else if (filter === 4) {
        const p = a + b - c, pa = Math.abs(p - a), pb = Math.abs(p - b), pc = Math.abs(p - c);
        predictor = pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
      }
      pixels[y * stride + x] = (value + predictor) & 255;
    }
  }
  return { width, height, channels, pixels };
}

async function main() {
  const binary = process.env.RINGMQ_BIN;
  if (!binary || !fs.existsSync(binary)) fail('set RINGMQ_BIN to the ringmq binary');
  const [mqttPort, httpPort] = [await freePort(), await freePort()];
  const broker = spawn(binary, ['--bind', '127.0.0.1', '--port', String(mqttPort), '--workers', '2',
    '--http-port', String(httpPort), '--admin-token', TOKEN, '--ring-entries', '256', '--recv-buffers', '64'],
  { stdio: ['ignore', 'ignore', 'inherit'] });
  const sockets = [];
  let browser;
  try {
    const base = `http://127.0.0.1:${httpPort}`;
    await waitForHttp(`${base}/metrics`, broker);
    for (let i = 0; i < CLIENTS; i++) sockets.push(await mqttClient(mqttPort, `dash-${process.pid}-${i}`, 20));
    browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
      args: ['--no-sandbox', '--disable-gpu'] });
    const page = await browser.newPage({ viewport: VIEWPORT });
    await page.goto(`${base}/dashboard#token=${TOKEN}`, { timeout: TIMEOUT_MS });
    // Live, with at least three samples (two rates) and all the clients counted.
    await page.waitForFunction((clients) => {
      const status = document.getElementById('status');
      const line = document.querySelector('#chart-messages polyline');
      return status.className === 'live' && line && Number(line.dataset.points) >= 2
        && document.getElementById('clients').textContent === String(clients);
    }, CLIENTS, { timeout: TIMEOUT_MS });
    const seen = await page.evaluate(() => ({
      status: document.getElementById('status').textContent,
      connections: document.getElementById('connections').textContent,
      clients: document.getElementById('clients').textContent,
      version: document.getElementById('version').textContent,
      rss: document.getElementById('rss').textContent,
      charts: ['chart-connections', 'chart-messages', 'chart-turn'].map((id) =>
        Array.from(document.querySelectorAll(`#${id} polyline`)).map((line) => Number(line.dataset.points))),
      loginShown: getComputedStyle(document.getElementById('login')).display !== 'none',
      tokenLeftInUrl: location.hash.includes('token'),
    }));
    console.log(JSON.stringify(seen));
    check(seen.status === 'live', 'the page polls the admin API with the token');
    check(seen.clients === String(CLIENTS), `the clients tile shows ${CLIENTS}`);
    check(Number(seen.connections) >= CLIENTS, 'the connections tile counts them');
    check(/^v\d+\.\d+\.\d+/.test(seen.version), 'the version is shown');
    check(/MiB$/.test(seen.rss) && parseFloat(seen.rss) > 1, 'resident memory is shown');
    // The mean turn time has no point for a second in which every worker slept, so only the
    // max line of the turn chart must have two.
    const [connectionsChart, messagesChart, turnChart] = seen.charts;
    check(connectionsChart.length === 1 && connectionsChart[0] >= 2 && messagesChart.length === 2
      && messagesChart.every((n) => n >= 2) && turnChart.length >= 1 && turnChart.some((n) => n >= 2),
    'three charts drawn, with at least two points per line (the turn chart: its max line)');
    check(!seen.loginShown && !seen.tokenLeftInUrl, 'no login prompt, and the token left the URL');
    await page.screenshot({ path: screenshotPath, fullPage: false });
    const file = fs.readFileSync(screenshotPath);
    const png = decodePng(file);
    check(png.width === VIEWPORT.width && png.height === VIEWPORT.height, `screenshot is ${png.width}x${png.height}`);
    check(file.length > 20000, `screenshot is ${file.length} bytes (a blank page compresses far below 20 kB)`);
    // The background is the most common colour; count the pixels far from it.
    const counts = new Map();
    for (let i = 0; i < png.pixels.length; i += png.channels) {
      const colour = (png.pixels[i] << 16) | (png.pixels[i + 1] << 8) | png.pixels[i + 2];
      counts.set(colour, (counts.get(colour) || 0) + 1);
    }
    const background = [...counts.entries()].reduce((best, entry) => (entry[1] > best[1] ? entry : best))[0];
    const colours = counts;
    let offBackground = 0;
    for (const [colour, count] of counts) {
      const distance = Math.abs((colour >> 16) - (background >> 16))
        + Math.abs(((colour >> 8) & 255) - ((background >> 8) & 255)) + Math.abs((colour & 255) - (background & 255));
      if (distance > 30) offBackground += count;
    }
    const share = offBackground / (png.width * png.height);
    check(colours.size > 50, `screenshot has ${colours.size} distinct colours`);
    check(share > 0.1, `${(share * 100).toFixed(1)}% of pixels are off the background`);
    console.log(`screenshot: ${screenshotPath}`);
  } finally {
    if (browser) await browser.close();
    for (const socket of sockets) socket.destroy();
    broker.kill('SIGTERM');
  }
}

main().catch((error) => {
  console.error(error);
  process.exitCode = 1;
});
