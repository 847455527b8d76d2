"""Scorers installed by another package through the `evalq.scorers` entry point group."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PLUGIN = '''
from workers.scorers import ScoreValue

def shouty(sample):
    """Output is in capitals."""
    text = sample.output or ""
    return ScoreValue(1.0 if text and text == text.upper() else 0.0)
'''


def test_entry_point_scorer_is_listed_and_usable(tmp_path: Path):
    (tmp_path / "evalq_shout_plugin.py").write_text(PLUGIN)
    dist = tmp_path / "evalq_shout_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: evalq-shout-plugin\n"
                                   "Version: 1.0\n")
    (dist / "entry_points.txt").write_text("[evalq.scorers]\nshouty = evalq_shout_plugin:shouty\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    listing = subprocess.run([sys.executable, "-m", "scheduler.cli.main", "scorers", "--json"],
                             capture_output=True, text=True, env=env, timeout=120, check=True)
    scorers = json.loads(listing.stdout)
    assert scorers["shouty"]["description"] == "Output is in capitals."
    code = ("from workers.scorers import resolve_scorers, Sample\n"
            "s = resolve_scorers(['shouty'])[0]\n"
            "print(s.fn(Sample(input='x', expected=None, output='LOUD')).value,"
            " s.fn(Sample(input='x', expected=None, output='quiet')).value)")
    scored = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, timeout=120, check=True)
    assert scored.stdout.split() == ["1.0", "0.0"]
