"""TUI figures: launch to a usable Assets screen on a big project, and terminal bytes per second.

1. Launch time. A project with 10,000 images and 1,000,000 particle positions
   is built with the Project API in a temporary directory. ``cistem-tui
   --panel assets PROJECT`` runs in a pseudo-terminal (80x24) against a
   running daemon; the clock runs from the launch until the Images table's
   first page ("1-100 of 10,000") has been drawn, then until the particle
   positions' first page ("of 1,000,000") is drawn after one more key.
   Reference in the same run: the same launch on an empty project.
2. Bytes per second. With the Jobs panel shown, a 1,000-task selftest job
   runs; every byte the TUI writes to its terminal is counted, normal and
   ``--ssh`` mode. Reference in the same run: the bytes per second of the idle
   TUI over the same time.

Run: ``.venv/bin/python benchmarks/tui.py [--repeats 3]``. Prints medians.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import re
import resource
import select
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
TUI = str(VENV_BIN / "cistem-tui")


def build_project(path: Path, n_images: int, n_positions: int) -> None:
    from cistemd.project import Project

    project = Project.create(path)
    try:
        per_image = max(1, n_positions // max(n_images, 1)) if n_images else 0
        xs = [float(50 + 30 * (i % 100)) for i in range(per_image)]
        ys = [float(50 + 30 * (i // 100)) for i in range(per_image)]
        for i in range(n_images):
            image_id = project.add_image(
                path / f"image_{i:05d}.mrc",
                pixel_size_angstroms=1.0,
                voltage_kv=300.0,
                spherical_aberration_mm=2.7,
                x_size=4096,
                y_size=4096,
            )
            if per_image:
                project.add_particle_positions(image_id, xs, ys)
    finally:
        project.close()


_TOKEN = re.compile(
    r"\x1b\[([0-9;?]*)([A-Za-z@])"  # CSI: cursor moves (H) and styles
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"  # OSC
    r"|\x1b."  # other escapes
    r"|[\r\n]|[^\x1b\r\n]+"
)


def _incomplete(tail: str) -> bool:
    """Whether ``tail`` (from an ESC) is an escape sequence cut short by a read."""
    if tail == "\x1b":
        return True
    if tail.startswith("\x1b["):
        return re.match(r"\x1b\[[0-9;?]*[A-Za-z@]", tail) is None
    if tail.startswith("\x1b]"):
        return "\x07" not in tail and "\x1b\\" not in tail[1:]
    return False


class Screen:
    """Just enough of a terminal to read what Textual drew: cursor moves and text.

    Textual redraws only the changed tail of a line, so the screen must be
    rebuilt to see a label that was updated in place.
    """

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.rows = [[" "] * width for _ in range(height)]
        self.row = self.col = 0
        self.pending = ""

    def feed(self, text: str) -> None:
        text = self.pending + text
        self.pending = ""
        cut = text.rfind("\x1b")
        if cut != -1 and _incomplete(text[cut:]):
            text, self.pending = text[:cut], text[cut:]  # an escape split across reads
        for match in _TOKEN.finditer(text):
            token = match.group(0)
            if match.group(2):
                if match.group(2) == "H":
                    parts = (match.group(1) or "1;1").split(";")
                    self.row = max(0, int(parts[0] or 1) - 1)
                    self.col = max(0, int(parts[1] or 1) - 1) if len(parts) > 1 else 0
            elif token == "\r":
                self.col = 0
            elif token == "\n":
                self.row += 1
            elif not token.startswith("\x1b"):
                for char in token:
                    if 0 <= self.row < self.height and 0 <= self.col < self.width:
                        self.rows[self.row][self.col] = char
                    self.col += 1

    def text(self) -> str:
        return "\n".join("".join(row) for row in self.rows)


class Terminal:
    """A program on a pseudo-terminal; counts (and keeps) what it writes."""

    def __init__(self, argv: list[str], env: dict[str, str], size=(80, 24)) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", size[1], size[0], 0, 0))
        self.proc = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True
        )
        os.close(slave)
        self.output = bytearray()
        self.screen = Screen(*size)
        self.lock = threading.Lock()
        self.stopped = False
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while not self.stopped:
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if not ready:
                continue
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return
            if not data:
                return
            with self.lock:
                self.output += data
                self.screen.feed(data.decode("utf-8", "replace"))

    def count(self) -> int:
        with self.lock:
            return len(self.output)

    def text(self) -> str:
        with self.lock:
            return self.output.decode("utf-8", "replace")

    def shown(self) -> str:
        """The screen as drawn now."""
        with self.lock:
            return self.screen.text()

    def send(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def wait_for(self, needle: str, timeout: float = 60.0) -> float:
        start = time.perf_counter()
        while needle not in self.shown():
            if time.perf_counter() - start > timeout:
                raise TimeoutError(f"{needle!r} not drawn within {timeout} s")
            time.sleep(0.005)
        return time.perf_counter()

    def close(self) -> None:
        self.send("q")
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.stopped = True
        self.reader.join(timeout=2)
        os.close(self.master)


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def launch_cpu_s(project: Path, env: dict[str, str], n_images: int) -> float:
    """CPU seconds the TUI process spends from launch to the Images page, plus quitting.

    Unlike wall-clock time, this does not grow when other work shares the machine.
    """
    before = _children_cpu_s()
    term = Terminal([TUI, "--panel", "assets", str(project)], env)
    try:
        term.send(">")
        term.wait_for(f"1-{min(100, n_images)} of {n_images:,}" if n_images else "0-0 of 0")
    finally:
        term.close()
    return _children_cpu_s() - before


def launch_times(
    project: Path, env: dict[str, str], n_images: int, n_positions: int
) -> tuple[float, float | None]:
    start = time.perf_counter()
    term = Terminal([TUI, "--panel", "assets", str(project)], env)
    try:
        term.send(">")  # Movies -> Images (typed ahead, read once the UI is up)
        first = f"1-{min(100, n_images)} of {n_images:,}" if n_images else "0-0 of 0"
        images = term.wait_for(first) - start
        positions = None
        if n_positions:
            term.send(">")
            t0 = time.perf_counter()
            # The groups list and the table are filled in the same step; the page
            # label may still be under the "project open" notification.
            while f"({n_positions:,})" not in term.shown():
                if time.perf_counter() - t0 > 60:
                    raise TimeoutError("positions page not drawn")
                time.sleep(0.005)
            positions = time.perf_counter() - t0
        return images, positions
    finally:
        term.close()


def bytes_per_second(
    project: Path, env: dict[str, str], *, ssh: bool, tasks: int, sleep_s: float
) -> tuple[float, float, float]:
    from cistemd.client import Client

    argv = [TUI, "--panel", "jobs", "--ssh" if ssh else "--no-ssh", str(project)]
    term = Terminal(argv, env)
    try:
        term.wait_for("Cancel job")
        time.sleep(2.0)  # let the first draw and the first loads finish
        idle_start, idle_bytes = time.perf_counter(), term.count()
        time.sleep(5.0)
        idle_rate = (term.count() - idle_bytes) / (time.perf_counter() - idle_start)
        with Client(env["CISTEM_HOME"]) as client:
            job_id = client.submit(project, "selftest", {"tasks": tasks, "sleep": sleep_s})
            client.wait_for_job(job_id, states=("running",), timeout=60, interval=0.02)
            start, mark = time.perf_counter(), term.count()
            record = client.wait_for_job(job_id, timeout=600, interval=0.2)
            elapsed = time.perf_counter() - start
            busy_rate = (term.count() - mark) / elapsed
            if os.environ.get("CISTEM_TUI_BENCH_DUMP"):
                with open(os.environ["CISTEM_TUI_BENCH_DUMP"] + ("-ssh" if ssh else ""), "wb") as f:
                    f.write(bytes(term.output[mark:]))
        assert record["state"] == "completed", record
        return busy_rate, idle_rate, elapsed
    finally:
        term.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--positions", type=int, default=1_000_000)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--sleep", type=float, default=0.05, help="seconds per selftest task")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="cistem-tui-bench-") as tmp:
        root = Path(tmp)
        home = root / "home"
        env = {**os.environ, "CISTEM_HOME": str(home), "TERM": "xterm-256color"}
        env.pop("SSH_CONNECTION", None)
        big, empty = root / "big", root / "empty"
        t0 = time.perf_counter()
        build_project(big, args.images, args.positions)
        build_project(empty, 0, 0)
        print(f"built the project ({args.images:,} images, {args.positions:,} positions) "
              f"in {time.perf_counter() - t0:.1f} s")  # fmt: skip
        subprocess.run(
            [str(VENV_BIN / "cistemd"), "start"], env=env, check=True, capture_output=True
        )
        try:
            from cistemd.client import Client

            with Client(home) as client:  # open both once: measure the TUI, not the first open
                client.open_project(big)
                client.open_project(empty)
            big_images, big_positions, empty_images, big_cpu, empty_cpu = [], [], [], [], []
            for _ in range(args.repeats):
                big_cpu.append(launch_cpu_s(big, env, args.images))
                empty_cpu.append(launch_cpu_s(empty, env, 0))
                images, positions = launch_times(big, env, args.images, args.positions)
                big_images.append(images)
                big_positions.append(positions or 0.0)
                empty_images.append(launch_times(empty, env, 0, 0)[0])
            med_big = statistics.median(big_images)
            med_empty = statistics.median(empty_images)
            print(
                f"launch -> Assets (Images, first page of {args.images:,}): "
                f"median {med_big:.3f} s over {args.repeats}"
            )
            print(
                f"  then -> Particle Positions (first page of {args.positions:,}): "
                f"median {statistics.median(big_positions):.3f} s"
            )
            print(
                f"  reference, same launch on an empty project: median {med_empty:.3f} s; "
                f"ratio big/empty {med_big / med_empty:.2f}"
            )
            print(
                f"  CPU time of the TUI process (launch -> Images page -> quit): median "
                f"{statistics.median(big_cpu):.3f} s; empty project "
                f"{statistics.median(empty_cpu):.3f} s (not inflated by other load)"
            )
            for ssh in (False, True):
                busy, idle, elapsed = bytes_per_second(
                    empty, env, ssh=ssh, tasks=args.tasks, sleep_s=args.sleep
                )
                mode = "--ssh" if ssh else "normal"
                print(
                    f"terminal output while a {args.tasks}-task job runs ({elapsed:.1f} s), "
                    f"{mode} mode: {busy / 1024:.2f} KB/s; idle reference {idle / 1024:.3f} KB/s"
                )
        finally:
            subprocess.run(
                [str(VENV_BIN / "cistemd"), "stop", "--force"], env=env, capture_output=True
            )
    print("(machine shared with other work: absolute times are contended)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
