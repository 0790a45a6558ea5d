"""robust_cli.io: atomic writes leave ordinary, collaborator-readable files."""

from __future__ import annotations

import subprocess
import sys

from cli_helpers import REPO


def test_written_files_follow_the_umask(tmp_path):
    # umask is read once at import, so set it in a fresh interpreter before importing robust_cli.io
    code = (
        "import os, sys, stat; os.umask(0o022)\n"
        "import pandas as pd, torch\n"
        "from robust_cli import io\n"
        "d = sys.argv[1]\n"
        "paths = [io.write_text(d + '/a.txt', 'x'), io.write_json(d + '/run.json', {'a': 1}),\n"
        "         io.write_csv(d + '/h.csv', pd.DataFrame({'a': [1]})),\n"
        "         io.torch_save(d + '/m.pt', {'w': torch.ones(1)})]\n"
        "print(' '.join(oct(stat.S_IMODE(os.stat(p).st_mode)) for p in paths))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["0o644"] * 4
    assert not list(tmp_path.glob("*.tmp"))
