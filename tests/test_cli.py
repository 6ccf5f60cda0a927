"The `fastcam` command as a user runs it (subprocesses): run over a folder with bad files, resume after an interruption and after kill -9, several processes (and accelerate), safety."
import json, os, re, shutil, signal, socket, subprocess, sys, time
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from conftest import exported_dicom_learner
import numpy as np, pandas as pd, pydicom, pytest, torch
from PIL import Image
from fastai.vision.all import DataBlock, CategoryBlock, ColReader, ColSplitter, Resize, vision_learner
from fastcam.synth import make_dicom_set, make_png_set
from fastcam.items import DicomBlock
from fastcam.cli import tiny_xresnet

ENV = {**os.environ, 'MPLBACKEND': 'Agg', 'PYTHONWARNINGS': 'ignore'}

def _fastcam(*args, timeout=600):
    exe = shutil.which('fastcam', path=str(Path(sys.executable).parent))
    cmd = [exe, *args] if exe else [sys.executable, '-m', 'fastcam.cli', *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout)

@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    "An exported tiny learner (briefly trained on synthetic DICOMs) and an input folder with good and bad files"
    root = tmp_path_factory.mktemp('cli')
    learn = exported_dicom_learner(root, n=24)
    inp = root/'in'
    make_dicom_set(inp/'dicom', n=60, seed=2, folder='sub')
    make_png_set(inp/'png', n=2, seed=3)
    good = sorted((inp/'dicom'/'sub').glob('*.dcm'))
    bad = inp/'bad'; bad.mkdir()
    raw = good[0].read_bytes()
    (bad/'truncated.dcm').write_bytes(raw[:len(raw)//2])
    (bad/'garbage.dcm').write_bytes(b'\0'*128 + b'DICM' + os.urandom(300))
    ds = pydicom.dcmread(good[1]); del ds.PixelData; ds.save_as(bad/'nopixels.dcm')
    # 12-bit JPEG Extended: only pylibjpeg-libjpeg (GPL, never in fastcam's extras) decodes it, so it fails with and without `fastcam[dicom]`
    shutil.copy(pydicom.data.get_testdata_file('JPGExtended.dcm'), bad/'jpeg12.dcm')
    (bad/'notes.dcm').write_text('this is not an image')
    return root, inp

def _links(html):
    class P(HTMLParser):
        def __init__(self): super().__init__(); self.refs = []
        def handle_starttag(self, tag, attrs):
            self.refs += [v for k, v in attrs if k in ('src', 'href')]
    p = P(); p.feed(html); return p.refs

@pytest.fixture(scope='module')
def ref(setup):
    "The uninterrupted single-process run over the whole input folder: what resumed and multi-process runs must reproduce"
    root, inp = setup
    out = root/'out'
    r = _fastcam('run', str(root/'model.pkl'), str(inp), '--out', str(out), '--trust', '--bs', '16')
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r

def _outputs(out):
    "What a run left in `out`, free of order: boxes rows, COCO images/categories/annotations by file name, errors, overlay names, the report's images"
    boxes = pd.read_csv(out/'boxes.csv').sort_values(['file', 'class', 'x0', 'y0', 'x1', 'y1']).reset_index(drop=True)
    coco = json.loads((out/'boxes.coco.json').read_text())
    names, cats = {i['id']: i['file_name'] for i in coco['images']}, {c['id']: c['name'] for c in coco['categories']}
    anns = sorted((names[a['image_id']], cats[a['category_id']], *a['bbox'], a['area'], a['score']) for a in coco['annotations'])
    return dict(boxes=boxes, errors=pd.read_csv(out/'errors.csv').sort_values('file').reset_index(drop=True),
                scores=np.array([a[-1] for a in anns]), anns=[a[:-1] for a in anns], cats=sorted(cats.values()),
                images=sorted((i['file_name'], i['width'], i['height']) for i in coco['images']),
                overlays=sorted(p.name for p in (out/'overlays').glob('*.png')),
                report=sorted(x for x in _links((out/'report.html').read_text()) if x.endswith('.png')))

def assert_same_outputs(a, b):
    "Runs into folders `a` and `b` gave the same outputs (probabilities and scores to 1e-5: batches may differ)"
    a, b = _outputs(a), _outputs(b)
    pd.testing.assert_frame_equal(a.pop('boxes'), b.pop('boxes'), atol=1e-5)
    pd.testing.assert_frame_equal(a.pop('errors'), b.pop('errors'))
    np.testing.assert_allclose(a.pop('scores'), b.pop('scores'), atol=1e-5)
    assert a == b and len(a['overlays']) == 62

def _summary(stdout):
    "(done, skipped, failed) from the summary line"
    return tuple(map(int, re.search(r'(\d+) done, (\d+) skipped \(done before\), (\d+) failed', stdout).groups()))

def test_run_folder_with_bad_files(setup, ref):
    root, inp = setup
    out, r = ref
    assert '62 done, 0 skipped (done before), 5 failed' in r.stdout
    assert len(list((out/'overlays').glob('*.png'))) == 62
    boxes = pd.read_csv(out/'boxes.csv')
    assert list(boxes.columns) == ['file', 'class', 'prob', 'x0', 'y0', 'x1', 'y1', 'score', 'reason', 'width_mm', 'height_mm', 'area_mm2', 'spacing_source']
    assert boxes.file.nunique() == 62
    errs = pd.read_csv(out/'errors.csv')
    assert sorted(Path(f).name for f in errs.file) == ['garbage.dcm', 'jpeg12.dcm', 'nopixels.dcm', 'notes.dcm', 'truncated.dcm']
    for f, e in zip(errs.file, errs.error): assert '\n' not in e and Path(f).name in e, e
    assert 'pip install pylibjpeg pylibjpeg-libjpeg' in errs.error[errs.file.str.endswith('jpeg12.dcm')].iloc[0]
    # boxes are inside their images (original pixels, read back from the files)
    for f, g in boxes.dropna(subset=['x0']).groupby('file'):
        H, W = (pydicom.dcmread(f, stop_before_pixels=True).Rows, pydicom.dcmread(f, stop_before_pixels=True).Columns) if f.endswith('.dcm') else Image.open(f).size[::-1]
        assert (g.x0 >= 0).all() and (g.y0 >= 0).all() and (g.x1 <= W).all() and (g.y1 <= H).all() and (g.x1 > g.x0).all()
    # COCO: every image and category an annotation references exists; bbox is [x, y, w, h]
    coco = json.loads((out/'boxes.coco.json').read_text())
    ids, cats = {i['id'] for i in coco['images']}, {c['id'] for c in coco['categories']}
    assert len(ids) == 62 and {c['name'] for c in coco['categories']} == {'normal', 'nodule'}
    for a in coco['annotations']:
        assert a['image_id'] in ids and a['category_id'] in cats and len(a['bbox']) == 4 and a['bbox'][2] > 0
    # the report's links and images resolve to files
    refs = _links((out/'report.html').read_text())
    assert len([x for x in refs if x.endswith('.png')]) >= 62
    for x in refs: assert (out/x).is_file(), x

def test_a_file_whose_overlay_cannot_be_written_is_recorded_and_the_rest_go_on(setup, ref, monkeypatch, capsys):
    "Writing happens on a second thread: a failure there names the file in errors.csv, its batch-mates and later batches are written"
    from fastcam import cli
    root, inp = setup
    out = root/'out_write_fail'
    draw, victim = cli._overlay, Path(sorted(pd.read_csv(ref[0]/'boxes.csv').file.unique())[20])
    def failing(img, m, title, boxes, o, f, vocab):
        if Path(f) == victim: raise OSError(f"disk full writing the overlay of {Path(f).name}")
        return draw(img, m, title, boxes, o, f, vocab)
    monkeypatch.setattr(cli, '_overlay', failing)
    assert cli.run(str(root/'model.pkl'), str(inp), out=str(out), trust=True, bs=16, progress=False) == 0
    assert _summary(capsys.readouterr().out) == (61, 0, 6)
    errs = pd.read_csv(out/'errors.csv')
    assert errs.error[errs.file == str(victim)].tolist() == [f"{victim}: OSError: disk full writing the overlay of {victim.name}"]
    good = pd.read_csv(out/'boxes.csv').file.unique()
    assert len(good) == 61 and str(victim) not in good and len(list((out/'overlays').glob('*.png'))) == 61

def _state(out):
    "{record name: (text, mtime_ns)} of the records in `out`, and {overlay: mtime_ns} of the explained ones"
    recs = {f.name: (f.read_text(), f.stat().st_mtime_ns) for f in (out/'records').glob('*.json')}
    ovs = {r['overlay']: (out/r['overlay']).stat().st_mtime_ns for r in (json.loads(t) for t, _ in recs.values()) if not r.get('error')}
    return recs, ovs

def _not_redone(before, after):
    "Every file explained before the resume kept its record and overlay untouched (same text, same mtime); failed files are retried"
    (recs, ovs), (recs2, ovs2) = before, after
    ok = {k: v for k, v in recs.items() if not json.loads(v[0]).get('error')}
    assert all(recs2[k] == v for k, v in ok.items()) and all(ovs2[k] == v for k, v in ovs.items())
    return len(ok)

def test_resume_after_interruption(setup, ref, monkeypatch, capsys):
    "Interrupted (KeyboardInterrupt, as Ctrl-C) once 20 files are explained, then the same command: every file explained exactly once, outputs as the uninterrupted run's"
    from fastcam import cli
    root, inp = setup
    out = root/'out_interrupted'
    explain, write = cli._explain_batch, cli.atomic_write
    explained, writes = [], Counter()
    def interrupted(learn, batch, cfg):
        if len(explained) >= 20: raise KeyboardInterrupt
        jobs = explain(learn, batch, cfg); explained.extend(batch)
        return jobs
    def counted(path, *args, **kwargs):
        writes[Path(path).relative_to(out).as_posix()] += 1
        return write(path, *args, **kwargs)
    monkeypatch.setattr(cli, 'atomic_write', counted)
    run = lambda: cli.run(str(root/'model.pkl'), str(inp), out=str(out), trust=True, bs=16, progress=False)
    monkeypatch.setattr(cli, '_explain_batch', interrupted)
    with pytest.raises(KeyboardInterrupt): run()
    assert 20 <= len(explained) < 62 and not (out/'boxes.csv').exists()
    before = _state(out)
    monkeypatch.setattr(cli, '_explain_batch', explain)
    capsys.readouterr()
    assert run() == 0
    assert _summary(capsys.readouterr().out) == (62 - len(explained), len(explained), 5)
    assert _not_redone(before, _state(out)) == len(explained)
    # one write per overlay and per record of an explained file, over both runs; the 5 failed files were tried once per run
    failed = {k for k, (t, _) in _state(out)[0].items() if json.loads(t).get('error')}
    assert len(failed) == 5 and {k for k, n in writes.items() if n != 1} == {f'records/{k}' for k in failed}
    assert all(writes[f'records/{k}'] == 2 for k in failed)
    assert_same_outputs(ref[0], out)

def test_resume_after_kill_9(setup, ref):
    "kill -9 in the middle of a batch, then the same command: nothing written before is redone or lost, outputs as the uninterrupted run's"
    root, inp = setup
    out = root/'out_kill'
    cmd = [shutil.which('fastcam', path=str(Path(sys.executable).parent)), 'run', str(root/'model.pkl'), str(inp), '--out', str(out), '--trust', '--bs', '16']
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    t0 = time.time()
    while time.time() - t0 < 300 and p.poll() is None and len(list((out/'records').glob('*.json')) if (out/'records').exists() else []) < 12:
        time.sleep(0.1)
    p.send_signal(signal.SIGKILL); p.wait()
    assert p.returncode == -signal.SIGKILL, 'the run ended before it was killed'
    before = _state(out)
    for t, _ in before[0].values(): json.loads(t)    # every record on disk is complete (leftovers of a write in flight are hidden temp files)
    n_ok = sum(not json.loads(t).get('error') for t, _ in before[0].values())
    assert 0 < n_ok < 62
    r = _fastcam('run', str(root/'model.pkl'), str(inp), '--out', str(out), '--trust', '--bs', '16')
    assert r.returncode == 0, r.stderr[-2000:]
    assert _summary(r.stdout) == (62 - n_ok, n_ok, 5)
    assert _not_redone(before, _state(out)) == n_ok
    assert_same_outputs(ref[0], out)

def test_two_processes_give_the_same_outputs(setup, ref):
    root, inp = setup
    r = _fastcam('run', str(root/'model.pkl'), str(inp), '--out', str(root/'p2'), '--trust', '--bs', '16', '--num-processes', '2')
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'by 2 processes' in r.stdout and _summary(r.stdout) == (62, 0, 5)
    assert_same_outputs(ref[0], root/'p2')

def _free_port():
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def test_accelerate_two_ranks_give_the_same_outputs(setup, ref, tmp_path):
    "`accelerate launch --multi_gpu --num_processes 2` (two gloo ranks on a CPU machine) gives the single-process run's outputs"
    pytest.importorskip('accelerate', reason='accelerate is not installed (a dev extra: pip install -e ".[dev]")')
    root, inp = setup
    exe = shutil.which('accelerate', path=str(Path(sys.executable).parent))
    launcher = [exe] if exe else [sys.executable, '-m', 'accelerate.commands.accelerate_cli']
    cmd = [*launcher, 'launch', '--multi_gpu', '--num_processes', '2', '--num_machines', '1', '--mixed_precision', 'no', '--dynamo_backend', 'no',
           '--main_process_port', str(_free_port()), '-m', 'fastcam.cli', 'run', str(root/'model.pkl'), str(inp), '--out', str(root/'acc'), '--trust', '--bs', '16']
    r = subprocess.run(cmd, capture_output=True, text=True, env={**ENV, 'HF_HOME': str(tmp_path)}, timeout=600)   # HF_HOME: no user accelerate config
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'by 2 processes' in r.stdout and _summary(r.stdout) == (62, 0, 5)
    assert 'destroy_process_group' not in r.stderr, r.stderr[-2000:]   # torch's warning for a rank that leaves its group alive (NCCL; gloo is silent)
    assert_same_outputs(ref[0], root/'acc')

def test_weights_only_needs_no_pickle(setup):
    root, inp = setup
    files = sorted((inp/'dicom'/'sub').glob('*.dcm'))[:3]
    r = _fastcam('run', '--arch', 'tiny_xresnet', '--weights', str(root/'weights.pth'), '--vocab', 'nodule,normal', '--size', '64',
                 *map(str, files), '--out', str(root/'w'))
    assert r.returncode == 0, r.stderr[-2000:]
    assert pd.read_csv(root/'w'/'boxes.csv').file.nunique() == 3

@pytest.mark.parametrize('args, msg', [
    (['model.pkl'], 'no INPUT given'),
    (['nosuch.pkl', 'x.dcm'], 'is not a file'),
    (['MODEL', 'x.dcm'], 'refusing to load'),
    (['MODEL', 'EMPTY'], 'no DICOM or image files found'),
    (['MODEL', 'BAD', '--trust'], 'no file could be explained'),
])
def test_bad_arguments_exit_nonzero_with_one_line(setup, tmp_path, args, msg):
    root, inp = setup
    (tmp_path/'empty').mkdir()
    subs = {'MODEL': str(root/'model.pkl'), 'EMPTY': str(tmp_path/'empty'), 'BAD': str(inp/'bad')}
    r = _fastcam('run', *[subs.get(a, a) for a in args], '--out', str(tmp_path/'o'))
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert msg in last and last.startswith('fastcam run:'), r.stderr[-1500:]

def test_demo_and_help(tmp_path):
    r = _fastcam('demo', '--out', str(tmp_path/'d'), '--n', '24', '--epochs', '1', '--size', '64')
    assert r.returncode == 0, r.stderr[-3000:]
    report = re.search(r'report: (\S+)', r.stdout).group(1)
    assert re.search(r"of the \d+ held-out files with a lesion, the 'nodule' box overlaps it \(IoU >= 0.5\) on \d+", r.stdout), r.stdout
    assert Path(report).is_file() and Path(report).parent == (tmp_path/'d'/'run').resolve()
    pngs = list((tmp_path/'d'/'run'/'overlays').glob('*.png'))
    assert pngs and all(np.asarray(Image.open(p).convert('RGB')).std() > 10 for p in pngs)   # real pictures
    r = _fastcam('--help')
    assert r.returncode == 0 and 'demo' in r.stdout and 'run' in r.stdout and 'tune' in r.stdout
    r = _fastcam('run', '--help')
    assert r.returncode == 0 and '--num-processes' in r.stdout and '--trust' in r.stdout
    r = _fastcam('explode')
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == "fastcam: unknown command 'explode'; choose one of: demo, run, tune (or --help, --version)"

def test_tta_and_save_maps_reach_the_engine(setup, capsys):
    "--tta --save-maps: each saved map is the mean of the file's and its mirror's normalised Grad-CAM (book-style, by hand), not the plain map"
    from fastai.learner import load_learner
    from fastcam import cli
    root, inp = setup
    files = sorted((inp/'dicom'/'sub').glob('*.dcm'))[:3]
    out = root/'out_tta'
    assert cli.run(str(root/'model.pkl'), *map(str, files), out=str(out), trust=True, tta=True, save_maps=True, progress=False) == 0
    from test_engine import book_gradcam, book_norm
    learn = load_learner(root/'model.pkl', cpu=True)
    model, layer = learn.model.eval(), learn.model[0][-1]        # the default layer: the body's last block
    xb = torch.cat([b[0] for b in learn.dls.test_dl(files)]).as_subclass(torch.Tensor)
    gradcam = lambda x, c: book_norm(book_gradcam(model, x, layer, c))
    for f, x in zip(files, xb):
        with torch.no_grad(): c = int(model(x[None]).argmax())
        exp = (gradcam(x[None], c) + gradcam(x[None].flip(-1), c).flip(-1))/2
        got = np.load(next((out/'maps').glob(f'{f.stem}_*.npy')))
        np.testing.assert_allclose(got[0], exp.numpy(), atol=1e-5)
        assert not np.allclose(got[0], gradcam(x[None], c).numpy(), atol=1e-3)   # tta changed the map
