"""Shared helpers for the command-line tests: run ``draftattention`` in-process, check its one-line errors."""

from __future__ import annotations

from draftattention_diffusers import cli


def run(capsys, *argv):
    """``cli.main(argv)`` (arguments as strings): (exit code, stdout, stderr)."""
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(rc, err, needle):
    """Exit code 1 and exactly one error line of ours, the last of stderr (libraries may print progress bars
    before it), holding ``needle``; no traceback. Returns that line."""
    assert rc == 1, err
    assert "Traceback" not in err
    ours = [ln for ln in err.splitlines() if "draftattention: error:" in ln]
    assert len(ours) == 1 and err.strip().splitlines()[-1] == ours[0], err
    assert needle in ours[0], ours[0]
    return ours[0]
