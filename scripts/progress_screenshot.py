"""Record what `mlc run` draws on a terminal (bars, log lines, stage summaries) on the tiny test
project, as an SVG for docs/img/. Usage: python scripts/progress_screenshot.py OUT.svg WORKDIR"""

import logging
import sys
from pathlib import Path

from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import free_port, tiny_config  # noqa: E402

from mlc_pipeline import progress  # noqa: E402
from mlc_pipeline.config import load_config  # noqa: E402
from mlc_pipeline.pipeline import run_pipeline  # noqa: E402


class ToConsole:
    """Log lines printed on the recording console, above the bars as on a terminal."""
    def __init__(self, console):
        self.console = console

    def write(self, text):
        if text.strip():
            self.console.print(text.rstrip("\n"), markup=False, highlight=False)

    def flush(self):
        pass


def main(out: str, workdir: str) -> None:
    console = Console(record=True, width=118, file=open("/dev/null", "w"))
    logging.basicConfig(level=logging.INFO, stream=ToConsole(console), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("flickrapi").setLevel(logging.WARNING)   # as `mlc` does
    progress.configure(True)
    progress.use_console(console)
    cfg = load_config(tiny_config(Path(workdir), free_port()))
    run_pipeline(cfg)
    console.save_svg(out, title="mlc run")


if __name__ == "__main__":
    main(*sys.argv[1:3])
