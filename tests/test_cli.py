"The `fastcam` console script, run as a user would (a subprocess), on the embedded synthetic default."
import shutil, subprocess, sys
import numpy as np
from pathlib import Path
from PIL import Image

def _fastcam(*args, **kw):
    exe = shutil.which('fastcam', path=str(Path(sys.executable).parent)) or shutil.which('fastcam')
    cmd = [exe, *args] if exe else [sys.executable, '-m', 'fastcam.cli', *args]
    return subprocess.run(cmd, capture_output=True, text=True, env={'MPLBACKEND': 'Agg', 'PATH': '/usr/bin:/bin'}, **kw)

def test_demo_writes_overlays_and_says_where(tmp_path):
    r = _fastcam('demo', '--out', str(tmp_path/'o'), '--n', '32', '--epochs', '1', '--size', '64', '--n-show', '4')
    assert r.returncode == 0, r.stderr[-2000:]
    where = [l for l in r.stdout.splitlines() if l.startswith('overlays: ')]
    assert where and Path(where[0].split(': ', 1)[1]) == (tmp_path/'o'/'overlays').resolve()
    pngs = sorted((tmp_path/'o'/'overlays').glob('*.png'))
    assert len(pngs) == 4
    for p in pngs:
        a = np.asarray(Image.open(p).convert('RGB')).astype(float)
        assert a.shape[0] > 100 and a.shape[1] > 100 and a.std() > 10   # a real picture, not a blank canvas
    labels = (tmp_path/'o'/'data'/'labels.csv').read_text().splitlines()
    assert labels[0].startswith('file,label') and len(labels) == 33

def test_help_and_bad_command():
    r = _fastcam('--help')
    assert r.returncode == 0 and 'demo' in r.stdout
    r = _fastcam('demo', '--help')
    assert r.returncode == 0 and '--epochs' in r.stdout
    r = _fastcam('explode')
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == "fastcam: unknown command 'explode'; choose one of: demo"
