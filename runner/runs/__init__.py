"""The run folder, the contract every backend hands back: its file names, atomic writes, the
submission record, the lock a live run holds, its state once the job has ended, and reading a
finished run back.

Imports from: runner.errors, runner.spec.
"""
