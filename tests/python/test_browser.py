"""A real browser against ringmq's WebSocket listener: headless Chromium (Debian's package,
driven by playwright-core) opens a page that uses MQTT.js, subscribes and publishes at QoS 1
through ws://127.0.0.1:PORT/mqtt, and the message must come back to it intact. scripts/test.sh
installs Chromium and the npm packages (tests/browser/, install_browser)."""

import json
import pathlib
import shutil
import subprocess

import pytest

from conftest import Broker, free_port

BROWSER_DIR = pathlib.Path(__file__).resolve().parents[1] / "browser"


def test_mqtt_js_in_headless_chromium_round_trips_over_websocket(request):
    if not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir() or not shutil.which("node"):
        pytest.fail("tests/browser is not installed: run scripts/test.sh (install_browser)",
                    pytrace=False)
    ws_port = free_port()
    broker = Broker(["--ws-bind", f"127.0.0.1:{ws_port}"])
    try:
        run = subprocess.run(
            ["node", str(BROWSER_DIR / "mqtt_ws_round_trip.mjs"), f"ws://127.0.0.1:{ws_port}/mqtt"],
            capture_output=True, text=True, timeout=60, cwd=BROWSER_DIR)
        assert run.returncode == 0, f"exit {run.returncode}\n{run.stdout}\n{run.stderr}\n{broker.log_tail()}"
        result = json.loads(run.stdout.strip().splitlines()[-1])
        assert result["topic"] == "browser/echo"
        assert result["payload"] == result["expected"]
        assert "Chrome/" in result["payload"], result  # sent by the browser itself
        assert result["qos"] == 1
    finally:
        broker.stop()
        broker.log.close()
