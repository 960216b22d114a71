"""What the user watches: a rich progress bar on a terminal, plain lines otherwise
(logs, CI, a remote container's stdout)."""

from __future__ import annotations

import sys

from runner.runs.lines import epoch_line, step_line


def console_listener(stream=None):
    stream = stream or sys.stdout
    return RichProgress() if stream.isatty() else PlainProgress(stream)


class PlainProgress:
    def __init__(self, stream):
        self.stream, self.epochs, self.total = stream, 0, 0

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def on_start(self, start: dict) -> None:
        self.epochs, self.total = start["epochs"], start["total_steps"]
        self._print(f"training on {start['device']} x{start['world_size']}: {start['parameters']:,} parameters, "
                    f"{start['epochs']} epoch(s) of {start['steps_per_epoch']} steps")

    def on_step(self, r: dict) -> None:
        self._print(step_line(r, self.total))

    def on_epoch(self, r: dict) -> None:
        self._print(epoch_line(r, self.epochs))

    def close(self) -> None:
        pass


class RichProgress:
    def __init__(self):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.console = Console()
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeRemainingColumn(), TextColumn("{task.fields[status]}"), console=self.console)
        self.task, self.epochs = None, 0

    def on_start(self, start: dict) -> None:
        self.epochs = start["epochs"]
        self.console.print(f"training on [bold]{start['device']}[/] x{start['world_size']}: "
                           f"{start['parameters']:,} parameters")
        self.bar.start()
        self.task = self.bar.add_task("train", total=start["total_steps"], status="")

    def on_step(self, r: dict) -> None:
        self.bar.update(self.task, completed=r["step"], description=f"epoch {r['epoch']}/{self.epochs}",
                        status=f"loss {r['loss']:.4f}")

    def on_epoch(self, r: dict) -> None:
        self.bar.update(self.task, completed=r["step"])
        self.bar.console.print(epoch_line(r, self.epochs))

    def close(self) -> None:
        self.bar.stop()
