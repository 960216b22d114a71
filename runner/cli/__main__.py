"""`python -m runner.cli`: how backends, workers and tests start gpujob."""

from runner.cli.main import main

main()  # typer's app ends the process with the command's exit code
