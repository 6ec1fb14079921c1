"""``python -m bench.jupyterlab_trial``: JupyterLab behind the gateway with the
session monitor on, in a real headless Chromium, revoked mid-work.

The trial the session monitor was built for: open a notebook, run a cell,
type into it without saving, have an administrator end the session, sign
in again in the monitor's window, and check that the unsaved cell is still
there and the same kernel (its state intact) runs the cell. Prints what it
saw and saves screenshots. Needs JupyterLab (not a dependency of the
gateway; about 100 MB):

    python3 -m venv /tmp/jl && /tmp/jl/bin/pip install jupyterlab
    JUPYTER=/tmp/jl/bin/jupyter .venv/bin/python -m bench.jupyterlab_trial [out-dir]
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from gateway.app import create_app
from gateway.config import load_config
from gateway.demo import _free_port, write_demo_config
from gateway.state import GATEWAY
from gateway.store import REVOKED_BY_ADMIN

NOTEBOOK = {"cells": [{"cell_type": "code", "execution_count": None, "id": "a1", "metadata": {},
                       "outputs": [], "source": ["1 + 1"]}],
            "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python",
                                        "name": "python3"}},
            "nbformat": 4, "nbformat_minor": 5}


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp")
    work = Path(tempfile.mkdtemp())
    (work / "trial.ipynb").write_text(json.dumps(NOTEBOOK))
    jport, port = _free_port(), _free_port()
    lab = subprocess.Popen(
        [os.environ.get("JUPYTER", "jupyter"), "lab", "--no-browser", "--allow-root",
         f"--ServerApp.port={jport}", "--ServerApp.ip=127.0.0.1", "--IdentityProvider.token=",
         "--ServerApp.password=", f"--ServerApp.root_dir={work}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{jport}/api/status")
                break
            except OSError:
                time.sleep(0.5)
        return trial(out, port, jport)
    finally:
        lab.terminate()


def trial(out: Path, port: int, jport: int) -> int:
    # The demo's config, pointed at JupyterLab: the monitor on, looking every 2 s,
    # and the client's Host passed on (JupyterLab checks it against Origin).
    cfg = write_demo_config(Path(tempfile.mkdtemp()), port, jport)
    text = cfg.read_text().replace("idle_timeout: 30m", "idle_timeout: 30m\n  monitor_interval: 2s")
    cfg.write_text(text.replace("  session_monitor: true",
                                "  session_monitor: true\n  preserve_host: true"))
    app = create_app(load_config(cfg))
    loop = asyncio.new_event_loop()

    async def serve() -> None:
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
    threading.Thread(target=lambda: (loop.run_until_complete(serve()), loop.run_forever()),
                     daemon=True).start()
    time.sleep(1)
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,800"):
        options.add_argument(arg)
    d = webdriver.Chrome(service=webdriver.ChromeService("/usr/bin/chromedriver"),
                         options=options)

    def wait(condition: Callable[[], Any], seconds: float = 60) -> Any:
        end = time.time() + seconds
        while time.time() < end:
            try:
                if result := condition():
                    return result
            except Exception:
                pass
            time.sleep(0.3)
        d.save_screenshot(str(out / "jupyterlab-timeout.png"))
        raise SystemExit("timed out; see jupyterlab-timeout.png")

    def monitor(css: str) -> list[Any]:
        hosts = d.find_elements(By.CSS_SELECTOR, "[data-gateway-monitor]")
        return hosts[0].shadow_root.find_elements(By.CSS_SELECTOR, css) if hosts else []

    def status() -> str:
        return d.find_element(By.CSS_SELECTOR, "#jp-main-statusbar").text.replace("\n", " ")

    def outputs() -> list[str]:
        return [e.text for e in d.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output")
                if e.text]

    def sign_in() -> None:
        d.find_element(By.ID, "username").send_keys("alice")
        d.find_element(By.ID, "password").send_keys("alice-demo")
        d.find_element(By.CSS_SELECTOR, "button[type=submit]").click()

    try:
        d.get(f"http://127.0.0.1:{port}/_gateway/login?rd=/lab/tree/trial.ipynb")
        sign_in()
        wait(lambda: d.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell"))
        wait(lambda: "Idle" in status())
        cell = d.find_element(By.CSS_SELECTOR, ".jp-Cell .cm-content")
        cell.click()
        cell.send_keys(Keys.SHIFT, Keys.ENTER)
        print("before the revoke, the cell gave:", wait(outputs, 40))
        cell = d.find_element(By.CSS_SELECTOR, ".jp-Cell .cm-content")
        cell.click()
        cell.send_keys(Keys.END, " + 40")          # unsaved work
        asyncio.run_coroutine_threadsafe(app[GATEWAY].sessions.end_all(
            "alice", REVOKED_BY_ADMIN, "admin:trial"), loop).result()
        dialog = wait(lambda: monitor(".dialog"), 20)[0]
        d.save_screenshot(str(out / "jupyterlab-signed-out.png"))
        print("the monitor said:", dialog.text.splitlines()[:2])
        main_window = d.current_window_handle
        dialog.find_element(By.CSS_SELECTOR, "button").click()
        wait(lambda: len(d.window_handles) == 2)
        d.switch_to.window(next(h for h in d.window_handles if h != main_window))
        wait(lambda: d.find_element(By.ID, "username"))
        sign_in()
        wait(lambda: len(d.window_handles) == 1)
        d.switch_to.window(main_window)
        wait(lambda: not monitor(".dialog"), 20)
        print("after signing in again, the cell reads:",
              repr(d.find_element(By.CSS_SELECTOR, ".jp-Cell .cm-content").text))
        print("JupyterLab's dialogs:", [x.text for x in d.find_elements(By.CSS_SELECTOR,
                                                                        ".jp-Dialog")])
        cell = d.find_element(By.CSS_SELECTOR, ".jp-Cell .cm-content")
        cell.click()
        cell.send_keys(Keys.SHIFT, Keys.ENTER)
        print("run again, the cell gave:", wait(lambda: [o for o in outputs() if o != "2"], 40))
        print("kernel:", status())
        time.sleep(1)
        d.save_screenshot(str(out / "jupyterlab-after-sign-in.png"))
    finally:
        d.quit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
