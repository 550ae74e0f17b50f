"""Notebooks in a real browser, as a new user meets them: JupyterLab, headless Chromium, Selenium.

    python tests/browser_check.py [--out FOLDER] [--notebook 03_training.ipynb]

Not part of `make test` (it needs a browser and takes minutes). Needs Chromium and its driver (Debian:
`apt-get install chromium chromium-driver`) and `pip install selenium`. On copies in a temporary folder,
in the quick configuration with progress as in JupyterLab (CIFAR10_PROGRESS=auto), it

1. opens every stored notebook, as the series stores it (kernelspec as helpers.series writes it), waits
   for its kernel, and closes it: nothing may be marked modified, and closing may ask nothing;
2. runs one notebook with Run -> Run All Cells from the menu, saves it, closes it and opens it again:
   no output may read "Error displaying widget" or show a progress bar (a widget, or text such as
   "0%|"), and closing it may ask nothing.

Screenshots go to --out: look at them. Exit status 0 when every check passed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import nbformat
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from helpers import series  # noqa: E402 (after the repository is on the path)

A_BAR = re.compile(r"\d+%\|")
PROBLEMS = ("Error displaying widget", "model not found", "Traceback")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Lab:
    """A JupyterLab server on a temporary folder, and a headless Chromium on it."""

    def __init__(self, root: Path, out: Path):
        self.root, self.out, self.token, self.port = root, out, secrets.token_hex(16), free_port()
        self.server = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={self.port}", f"--ServerApp.root_dir={root}"]
            + [f"--IdentityProvider.token={self.token}", "--LabApp.expose_app_in_browser=True"]
            + (["--allow-root"] if os.geteuid() == 0 else []),  # containers often run as root
            stdout=open(out / "jupyterlab.log", "w"),
            stderr=subprocess.STDOUT,
        )
        self.wait(self.server_up, 120, "JupyterLab did not start (see jupyterlab.log)")
        options = Options()
        for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
            options.add_argument(argument)
        options.binary_location = shutil.which("chromium") or "chromium"
        self.browser = webdriver.Chrome(
            service=Service(shutil.which("chromedriver") or "chromedriver"), options=options
        )
        self.shots = 0

    def server_up(self) -> bool:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/status?token={self.token}", timeout=5)
            return True
        except OSError:
            return False

    @staticmethod
    def wait(condition, seconds: float, failure: str, every: float = 1.0):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            found = condition()
            if found:
                return found
            time.sleep(every)
        raise TimeoutError(failure)

    def js(self, script: str, *args):
        return self.browser.execute_script(script, *args)

    def open(self, name: str) -> None:
        self.browser.get(f"http://127.0.0.1:{self.port}/lab/tree/{name}?token={self.token}&reset")
        self.wait(
            lambda: self.js(
                "const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
                "return !!(w && w.context && w.context.isReady && w.sessionContext.session"
                " && w.sessionContext.session.kernel && w.sessionContext.session.kernel.status === 'idle');"
            ),
            300,
            f"{name}: the notebook or its kernel did not become ready",
        )
        time.sleep(3)  # JupyterLab writes the kernel's metadata once the kernel is ready

    def dirty(self) -> bool:
        return bool(self.js("return window.jupyterapp.shell.currentWidget.context.model.dirty;"))

    def shot(self, name: str) -> Path:
        self.shots += 1
        path = self.out / f"{self.shots:02d}-{name}.png"
        self.browser.save_screenshot(str(path))
        return path

    def close_tab_asks_nothing(self, name: str) -> bool:
        """Click the tab's close icon, as a user would; True if no dialog came and the tab went."""
        tab = self.browser.find_element(By.CSS_SELECTOR, ".jp-mod-current.lm-TabBar-tab .lm-TabBar-tabCloseIcon")
        tab.click()
        time.sleep(3)
        asked = self.browser.find_elements(By.CSS_SELECTOR, ".jp-Dialog")
        if asked:
            self.shot(f"{name}-asked-on-closing")
            self.js(
                "document.querySelector('.jp-Dialog .jp-mod-reject') && document.querySelector('.jp-Dialog .jp-mod-reject').click();"
            )
        return not asked

    def menu(self, *labels: str) -> None:
        """Click through the menu bar, e.g. menu("Run", "Run All Cells")."""
        bar = self.browser.find_elements(By.CSS_SELECTOR, ".lm-MenuBar-item")
        next(item for item in bar if item.text.strip() == labels[0]).click()
        for label in labels[1:]:
            time.sleep(0.5)
            items = self.browser.find_elements(By.CSS_SELECTOR, ".lm-Menu-item")
            next(item for item in items if item.text.strip().startswith(label)).click()

    def running(self) -> bool:
        return bool(
            self.js(
                "const w = window.jupyterapp.shell.currentWidget;"
                "return w.sessionContext.session.kernel.status !== 'idle'"
                " || [...document.querySelectorAll('.jp-InputPrompt')].some(p => p.textContent.includes('[*]'));"
            )
        )

    def rendered_outputs(self) -> list[str]:
        """The text of every rendered output of the open notebook, each cell scrolled into view in turn
        (JupyterLab renders only the cells near the view)."""
        count = self.js("return window.jupyterapp.shell.currentWidget.content.widgets.length;")
        texts: list[str] = []
        for index in range(count):
            self.js(
                "const nb = window.jupyterapp.shell.currentWidget.content;"
                "nb.activeCellIndex = arguments[0]; return nb.scrollToItem(arguments[0], 'start');",
                index,
            )
            time.sleep(0.3)
            texts += [element.text for element in self.browser.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output")]
        return texts

    def widgets_shown(self) -> int:
        return len(self.browser.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output .widget-hprogress"))

    def scroll_to_text(self, text: str) -> None:
        index = self.js(
            "const nb = window.jupyterapp.shell.currentWidget.content;"
            "return nb.widgets.findIndex(c => c.model.sharedModel.getSource().includes(arguments[0]));",
            text,
        )
        if index >= 0:
            self.js(
                "const nb = window.jupyterapp.shell.currentWidget.content;"
                "nb.activeCellIndex = arguments[0]; return nb.scrollToItem(arguments[0], 'start');",
                index,
            )
            time.sleep(1)

    def stop(self) -> None:
        self.browser.quit()
        self.server.terminate()
        self.server.wait(timeout=60)


def stale(outputs: list[str]) -> list[str]:
    return [text for text in outputs if any(problem in text for problem in PROBLEMS) or A_BAR.search(text)]


def saved_problems(path: Path) -> list[str]:
    """Widget outputs, bars and errors in the saved file itself."""
    found = []
    for cell in json.loads(path.read_text())["cells"]:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            text = "".join(output.get("text", "")) + "".join(data.get("text/plain", ""))
            if "application/vnd.jupyter.widget-view+json" in data:
                found.append("a widget output")
            if A_BAR.search(text) or output.get("output_type") == "error":
                found.append(text[:120] or output.get("ename", "an error"))
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=None, help="where screenshots and the log go (default: a new folder)"
    )
    parser.add_argument("--notebook", default="03_training.ipynb", help="the notebook to run, save and reopen")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="browser-check-"))
    out.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="lab-"))
    (root / "notebooks").mkdir()
    for path in series.notebooks():
        notebook = nbformat.read(path, as_version=4)
        notebook.metadata["kernelspec"] = series.kernelspec()  # as `make series` now stores it
        nbformat.write(notebook, root / "notebooks" / path.name)
    os.environ.update(CIFAR10_QUICK="1", CIFAR10_OUTPUT=str(root / "out"), CIFAR10_PROGRESS="auto")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    failures: list[str] = []
    lab = Lab(root, out)
    try:
        for path in sorted((root / "notebooks").glob("*.ipynb")):
            lab.open(f"notebooks/{path.name}")
            if lab.dirty():
                failures.append(f"{path.name} opened as modified")
            if not lab.close_tab_asks_nothing(path.stem):
                failures.append(f"closing the unchanged {path.name} asked something")
            print(f"opened and closed {path.name}", flush=True)
        name = f"notebooks/{args.notebook}"
        lab.open(name)
        lab.shot("opened")
        lab.menu("Run", "Run All Cells")
        print(f"Run All Cells on {name} ...", flush=True)
        started = time.monotonic()
        seen_widgets = 0
        while time.monotonic() - started < 3 * 60 * 60 and (time.monotonic() - started < 20 or lab.running()):
            if lab.widgets_shown() and not seen_widgets:
                lab.scroll_to_text("train.fit(")
                seen_widgets = lab.widgets_shown()
                lab.shot("a-widget-bar-while-it-runs")
            time.sleep(5)
        print(
            f"Run All took {time.monotonic() - started:.0f} s; widget bars seen while running: {seen_widgets}",
            flush=True,
        )
        lab.scroll_to_text("train.fit(")
        lab.shot("after-run-all")
        failures += [f"after the run: {text[:160]!r}" for text in stale(lab.rendered_outputs())]
        lab.js("return window.jupyterapp.commands.execute('docmanager:save');")
        time.sleep(3)
        if not lab.close_tab_asks_nothing("saved"):
            failures.append("closing the saved notebook asked something")
        failures += [f"saved file: {problem}" for problem in saved_problems(root / name)]
        lab.open(name)
        lab.scroll_to_text("train.fit(")
        lab.shot("reopened")
        failures += [f"reopened: {text[:160]!r}" for text in stale(lab.rendered_outputs())]
        if lab.dirty():
            failures.append("the reopened notebook is marked modified")
        if not lab.close_tab_asks_nothing("reopened"):
            failures.append("closing the reopened notebook asked something")
    finally:
        lab.stop()
    print(f"screenshots: {out}")
    for failure in failures:
        print(f"FAILED: {failure}")
    print("browser check passed" if not failures else f"browser check: {len(failures)} problem(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
