"Runs that are honest about what they did (issue 16 item 3): modes, resume with other options or model, --out inside the input, symlink loops, locks, temporaries, the launcher's signals, CSV formulas, quoted links, options checked up front."
import csv, json, os, re, shutil, signal, subprocess, sys, time, urllib.parse
from html.parser import HTMLParser
from pathlib import Path
from conftest import exported_dicom_learner
import numpy as np, pandas as pd, pytest, torch
from PIL import Image
from fastcore.script import CliError
from fastai.vision.all import DataBlock, CategoryBlock, ColReader, ColSplitter, Resize, vision_learner
from fastcam.synth import make_dicom_set, make_png_set
from fastcam.tune import default_recipe
from fastcam.items import DicomBlock
from fastcam.cli import tiny_xresnet
from fastcam import cli

ENV = {**os.environ, 'MPLBACKEND': 'Agg', 'PYTHONWARNINGS': 'ignore'}
EXE = shutil.which('fastcam', path=str(Path(sys.executable).parent))
FASTCAM = [EXE] if EXE else [sys.executable, '-m', 'fastcam.cli']

@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    "Two exported tiny learners (the second differs in one weight), its weights, and a folder of 6 DICOMs and 2 PNGs"
    root = tmp_path_factory.mktemp('runs')
    learn = exported_dicom_learner(root, n=16)
    with torch.no_grad(): next(learn.model.parameters()).add_(0.01)
    learn.export(root/'model2.pkl')
    inp = root/'in'
    make_dicom_set(inp, n=6, seed=2, folder='dcm')
    make_png_set(inp/'png', n=2, seed=3)
    return root, inp

def run(root, inp, out, **kw): return cli.run(str(root/kw.pop('model', 'model.pkl')), *map(str, inp if isinstance(inp, list) else [inp]), out=str(out), trust=True, progress=False, **kw)

def n_inputs(inp): return len(list(Path(inp).rglob('*.dcm'))) + len(list(Path(inp).rglob('*.png')))

@pytest.mark.parametrize('umask', [0o022, 0o027])
def test_output_files_follow_the_umask(setup, tmp_path, umask):
    "Every file a run writes gets the mode open() gives under the umask (mkstemp alone made them all 0600)"
    root, inp = setup
    old = os.umask(umask)
    try: assert run(root, inp, tmp_path/'o') == 0
    finally: os.umask(old)
    files = [p for p in (tmp_path/'o').rglob('*') if p.is_file() and p.name != '.fastcam.lock']
    assert {'boxes.csv', 'report.html', 'errors.csv', 'boxes.coco.json', 'run.json'} <= {p.name for p in files}
    assert any(p.parent.name == 'overlays' for p in files) and any(p.parent.name == 'records' for p in files)
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {oct(0o666 & ~umask)}

def test_resume_with_other_options_or_model_refuses_or_recomputes_with_force(setup, tmp_path, capsys):
    root, inp = setup
    out, n = tmp_path/'o', n_inputs(inp)
    assert run(root, inp, out) == 0
    before = pd.read_csv(out/'boxes.csv')
    capsys.readouterr()
    for kw, says in [(dict(method='layercam'), 'method: gradcam -> layercam'), (dict(layer='0.4'), 'layer: null -> 0.4'),
                     (dict(target='nodule'), 'target: null -> nodule'), (dict(threshold=0.3), f"threshold: {default_recipe['threshold']} -> 0.3"),
                     (dict(model='model2.pkl'), 'model sha256: ')]:
        with pytest.raises(CliError) as e: run(root, inp, out, **kw)
        msg = str(e.value)
        assert '\n' not in msg and says in msg and '--force' in msg and msg.startswith('fastcam run:'), msg
    assert (out/'boxes.csv').read_text() == before.to_csv(index=False)   # the refused runs changed nothing
    # the same options again: nothing to do
    assert run(root, inp, out) == 0
    assert f'0 done, {n} skipped' in capsys.readouterr().out
    # --force recomputes every file with the new options: records, boxes and the run's metadata say layercam
    assert run(root, inp, out, method='layercam', force=True) == 0
    assert f'{n} done, 0 skipped' in capsys.readouterr().out
    recs = [json.loads(p.read_text()) for p in (out/'records').glob('*.json')]
    assert len(recs) == n and {r['method'] for r in recs} == {'layercam'}
    info = json.loads((out/'run.json').read_text())
    assert info['options']['method'] == 'layercam' and info['model']['sha256'] == __import__('hashlib').sha256((root/'model.pkl').read_bytes()).hexdigest()
    assert len({r['opts'] for r in recs}) == 1 and recs[0]['opts'] == info['key']
    # and the next plain resume with layercam skips them all
    assert run(root, inp, out, method='layercam') == 0
    assert f'0 done, {n} skipped' in capsys.readouterr().out

def test_out_inside_the_input_folder_is_excluded(setup, tmp_path, capsys):
    "`fastcam run model .` writes into ./fastcam_out: the second run must not explain the first run's overlays"
    root, inp = setup
    here = tmp_path/'here'; shutil.copytree(inp, here)
    n = n_inputs(here)
    for k in range(2):
        assert run(root, here, here/'fastcam_out', force=k == 1) == 0
        files = pd.read_csv(here/'fastcam_out'/'boxes.csv').file.unique()
        assert len(files) == n and not any('fastcam_out' in f for f in files)
    left = pd.read_csv(here/'fastcam_out'/'skipped.csv')
    assert left.reason[left.file == str(here/'fastcam_out')].tolist() == ['the output folder (--out) inside an input folder']

def test_symlink_loops_dangling_links_and_unknown_files_are_each_one_row(setup, tmp_path, capsys):
    root, inp = setup
    d = tmp_path/'in'; shutil.copytree(inp, d)
    os.symlink('loop.dcm', d/'loop.dcm'); os.symlink('nowhere.png', d/'dangling.png'); (d/'notes.txt').write_text('hi')
    os.symlink('selfloop', tmp_path/'selfloop')
    assert run(root, [d, tmp_path/'selfloop'], tmp_path/'o') == 0          # a loop named on the command line no longer stops the run
    out = capsys.readouterr().out
    errs = pd.read_csv(tmp_path/'o'/'errors.csv')
    why = dict(zip(errs.file.map(lambda f: Path(f).name), errs.error))
    assert set(why) == {'loop.dcm', 'dangling.png', 'selfloop'}, why
    assert 'symlink loop' in why['loop.dcm'] and 'symlink loop' in why['selfloop'] and 'dangling symlink' in why['dangling.png']
    left = pd.read_csv(tmp_path/'o'/'skipped.csv')
    assert str(d/'notes.txt') in set(left.file) and str(d/'labels.csv') in set(left.file)   # make_dicom_set's label table: not an image
    assert re.search(rf'{n_inputs(inp)} done, 0 skipped \(done before\), 3 failed.*{len(left)} inputs left out \(see skipped.csv\)', out), out

def test_a_second_run_into_the_same_out_stops_with_the_first_runs_pid(setup, tmp_path, capsys):
    "The lock is an flock: the test holds it as another process would (a different open file), the run stops before any work"
    from fastcam.runs import lock_out
    root, inp = setup
    (tmp_path/'o').mkdir()
    fd = lock_out(tmp_path/'o', pid=31337)
    try: assert cli.main(['run', str(root/'model.pkl'), str(inp), '--out', str(tmp_path/'o'), '--trust']) == 2
    finally: os.close(fd)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('fastcam run:') and 'pid 31337' in err[0], err
    assert not (tmp_path/'o'/'records').exists()
    assert run(root, inp, tmp_path/'o') == 0     # released: the next run works

def test_temporaries_of_a_killed_run_are_removed(setup, tmp_path):
    root, inp = setup
    assert run(root, inp, tmp_path/'o') == 0
    junk = [tmp_path/'o'/'records'/'.abc.json.x1y2.tmp', tmp_path/'o'/'overlays'/'.case.png.q9.tmp', tmp_path/'o'/'.boxes.csv.zz.tmp']
    for p in junk: p.write_text('half')
    assert run(root, inp, tmp_path/'o') == 0
    assert not any(p.exists() for p in junk) and not list((tmp_path/'o').rglob('*.tmp'))

def test_formulas_in_csv_cells_are_neutralised(setup, tmp_path):
    "Class names that start like a spreadsheet formula are written with a leading quote (OWASP)"
    root, inp = setup
    files = sorted(Path(inp).rglob('*.dcm'))[:3]
    assert cli.run(*map(str, files), arch='tiny_xresnet', weights=str(root/'weights.pth'), vocab='=HYPERLINK("http://evil"),@SUM(1)', size=64,
                   out=str(tmp_path/'o'), progress=False) == 0
    with open(tmp_path/'o'/'boxes.csv', newline='') as f: rows = list(csv.DictReader(f))
    assert rows and {r['class'] for r in rows} <= {'\'=HYPERLINK("http://evil")', "'@SUM(1)"}
    assert not any(v.startswith(('=', '+', '-', '@')) for r in rows for v in r.values())

def _refs(page):
    class P(HTMLParser):
        def __init__(self): super().__init__(); self.refs = []
        def handle_starttag(self, tag, attrs): self.refs += [v for k, v in attrs if k in ('src', 'href')]
    p = P(); p.feed(page); return p.refs

def test_report_links_are_url_quoted(setup, tmp_path):
    "A browser reads href/src as URLs: '#' starts a fragment, '?' a query, '%41' is 'A'; each link must still reach its overlay"
    root, inp = setup
    d = tmp_path/'in'; d.mkdir()
    src = sorted((Path(inp)/'png').rglob('*.png'))[0]
    for name in ['a#1.png', 'b?2.png', 'c%41.png', 'd e.png']: shutil.copy(src, d/name)
    assert run(root, d, tmp_path/'o') == 0
    pngs = [r for r in _refs((tmp_path/'o'/'report.html').read_text()) if '.png' in r]
    assert len(pngs) >= 4
    for r in pngs:
        u = urllib.parse.urlsplit(r)
        assert not u.query and not u.fragment and (tmp_path/'o'/urllib.parse.unquote(u.path)).is_file(), r

def test_layer_target_and_method_are_checked_before_the_first_file(setup, tmp_path, capsys):
    root, inp = setup
    rc = cli.main(['run', str(root/'model.pkl'), str(inp), '--out', str(tmp_path/'o'), '--trust',
                   '--layer', '0.99', '--target', 'nodle', '--method', 'gradkam'])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 3 and all(l.startswith('fastcam run:') for l in err), err
    assert "unknown --method 'gradkam'" in err[0] and 'gradcam' in err[0]
    assert err[1].startswith('fastcam run: --layer 0.99:') and err[2].startswith('fastcam run: --target nodle:') and 'nodule' in err[2]
    assert not (tmp_path/'o'/'records').exists()

def _children(pid):
    "Pids of the live processes whose parent is `pid`"
    kids = []
    for p in Path('/proc').iterdir():
        if not p.name.isdigit(): continue
        try: st = (p/'stat').read_text()
        except OSError: continue
        fields = st[st.rindex(')')+2:].split()
        if int(fields[1]) == pid and fields[0] != 'Z': kids.append(int(p.name))
    return kids

def _alive(pid):
    try: st = Path(f'/proc/{pid}/stat').read_text()
    except OSError: return False
    return st[st.rindex(')')+2:].split()[0] != 'Z'

@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='parent-death signal and /proc are Linux')
@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGKILL])
def test_stopping_the_launcher_stops_its_ranks(setup, tmp_path, sig):
    "SIGTERM (timeout, a scheduler) is forwarded to both ranks; kill -9 of the launcher reaches them by the parent-death signal"
    root, inp = setup
    many = tmp_path/'many'; many.mkdir()
    src = sorted((Path(inp)/'png').rglob('*.png'))[0]
    for i in range(400): os.link(src, many/f'{i:04}.png')
    p = subprocess.Popen([*FASTCAM, 'run', str(root/'model.pkl'), str(many), '--out', str(tmp_path/'o'), '--trust', '--bs', '1', '--num-processes', '2'],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    t0 = time.time()
    while time.time() - t0 < 240 and p.poll() is None and not (tmp_path/'o'/'records').exists(): time.sleep(0.1)   # both ranks are at work
    ranks = _children(p.pid)
    assert p.poll() is None and len(ranks) == 2, 'the run ended (or never started) before it was stopped'
    p.send_signal(sig)
    t1 = time.time()
    while time.time() - t1 < 10 and any(map(_alive, ranks)): time.sleep(0.1)
    p.wait(timeout=30)
    assert not any(map(_alive, ranks)), f'ranks still running {time.time() - t1:.0f} s after the launcher got signal {sig}'
    assert len(list((tmp_path/'o'/'records').glob('*.json'))) < 400
