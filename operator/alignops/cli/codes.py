"""Exit codes of the ``alignops`` command: one table, shown by ``--help`` and the README (a test
keeps the README's table and this one in step)."""

from __future__ import annotations

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_UNREADABLE = 2
EXIT_SPEC_CHANGED = 3
EXIT_INTERRUPTED = 130

VALIDATE_EXIT_CODES = {
    EXIT_OK: "every manifest is valid",
    EXIT_INVALID: "a manifest is invalid (each error names its field)",
    EXIT_UNREADABLE: "a manifest cannot be read (missing, not UTF-8, not YAML)",
}

RUN_EXIT_CODES = {
    EXIT_OK: "the job succeeded",
    EXIT_INVALID: "the manifest or an option is invalid, or the job failed (the failed stage's message and log are shown)",
    EXIT_UNREADABLE: "the manifest cannot be read, the workdir cannot be used (not a directory, read-only, disk full), "
                     "or another run of the job holds its lock",
    EXIT_SPEC_CHANGED: "--no-rerun-changed and a stage's spec changed since it ran",
    EXIT_INTERRUPTED: "stopped (Ctrl-C, SIGHUP, SIGTERM) after the running stage committed a checkpoint; "
                      "the same command resumes",
}


def exit_code_help(command: str, codes: dict[int, str]) -> str:
    """The exit codes of ``command`` as help text (one paragraph per code)."""
    return f"Exit codes of {command}:\n\n" + "\n\n".join(f"{code}: {text}" for code, text in codes.items())
