"The `fastcam` command as a user runs it (subprocesses): run over a folder with bad files, resume after kill -9, several processes, safety."
import json, os, re, shutil, signal, subprocess, sys, time
from html.parser import HTMLParser
from pathlib import Path
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
    df = make_dicom_set(root/'train', n=24, seed=1)
    dblock = DataBlock(blocks=(DicomBlock(), CategoryBlock), get_x=ColReader('file', pref=root/'train'), get_y=ColReader('label'),
                       splitter=ColSplitter('is_valid'), item_tfms=Resize(64, method='squish'))
    torch.manual_seed(0)
    learn = vision_learner(dblock.dataloaders(df, bs=8, num_workers=0), tiny_xresnet, pretrained=False)
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    learn.export(root/'model.pkl')
    torch.save(learn.model.state_dict(), root/'weights.pth')
    inp = root/'in'
    make_dicom_set(inp/'dicom', n=60, seed=2, folder='sub')
    make_png_set(inp/'png', n=2, seed=3)
    good = sorted((inp/'dicom'/'sub').glob('*.dcm'))
    bad = inp/'bad'; bad.mkdir()
    raw = good[0].read_bytes()
    (bad/'truncated.dcm').write_bytes(raw[:len(raw)//2])
    (bad/'garbage.dcm').write_bytes(b'\0'*128 + b'DICM' + os.urandom(300))
    ds = pydicom.dcmread(good[1]); del ds.PixelData; ds.save_as(bad/'nopixels.dcm')
    shutil.copy(pydicom.data.get_testdata_file('MR_small_jpeg_ls_lossless.dcm'), bad/'jpegls.dcm')
    (bad/'notes.dcm').write_text('this is not an image')
    return root, inp

def _links(html):
    class P(HTMLParser):
        def __init__(self): super().__init__(); self.refs = []
        def handle_starttag(self, tag, attrs):
            self.refs += [v for k, v in attrs if k in ('src', 'href')]
    p = P(); p.feed(html); return p.refs

def test_run_folder_with_bad_files(setup):
    root, inp = setup
    out = root/'out'
    r = _fastcam('run', str(root/'model.pkl'), str(inp), '--out', str(out), '--trust', '--bs', '16')
    assert r.returncode == 0, r.stderr[-3000:]
    assert '62 done, 0 skipped (done before), 5 failed' in r.stdout
    assert len(list((out/'overlays').glob('*.png'))) == 62
    boxes = pd.read_csv(out/'boxes.csv')
    assert list(boxes.columns) == ['file', 'class', 'prob', 'x0', 'y0', 'x1', 'y1', 'score']
    assert boxes.file.nunique() == 62
    errs = pd.read_csv(out/'errors.csv')
    assert sorted(Path(f).name for f in errs.file) == ['garbage.dcm', 'jpegls.dcm', 'nopixels.dcm', 'notes.dcm', 'truncated.dcm']
    for f, e in zip(errs.file, errs.error): assert '\n' not in e and Path(f).name in e, e
    assert 'pip install' in errs.error[errs.file.str.endswith('jpegls.dcm')].iloc[0]
    # boxes are inside their images (original pixels, read back from the files)
    for f, g in boxes.dropna().groupby('file'):
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

def test_resume_after_kill_9(setup):
    root, inp = setup
    out = root/'out_kill'
    cmd = [shutil.which('fastcam', path=str(Path(sys.executable).parent)), 'run', str(root/'model.pkl'), str(inp/'dicom'), '--out', str(out), '--trust', '--bs', '4']
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    t0 = time.time()
    while time.time() - t0 < 300 and len(list((out/'records').glob('*.json'))) < 10 if (out/'records').exists() else time.time() - t0 < 300:
        time.sleep(0.2)
    p.send_signal(signal.SIGKILL); p.wait()
    before = {f.name: f.read_text() for f in (out/'records').glob('*.json')}
    assert 0 < len(before) < 60
    for t in (out/'records').glob('.*'): pass   # leftovers of an interrupted write are hidden temp files, never records
    for v in before.values(): json.loads(v)       # every record on disk is complete
    r = _fastcam('run', str(root/'model.pkl'), str(inp/'dicom'), '--out', str(out), '--trust', '--bs', '4')
    assert r.returncode == 0, r.stderr[-2000:]
    m = re.search(r'(\d+) done, (\d+) skipped \(done before\), (\d+) failed', r.stdout)
    done, skipped, failed = map(int, m.groups())
    assert skipped == len(before) and done + skipped == 60 and failed == 0
    after = {f.name: f.read_text() for f in (out/'records').glob('*.json')}
    assert all(after[k] == v for k, v in before.items())    # nothing written before the kill was redone or lost
    assert len(pd.read_csv(out/'boxes.csv').file.unique()) == 60

def test_two_processes_give_the_same_outputs(setup):
    root, inp = setup
    files = sorted((inp/'dicom'/'sub').glob('*.dcm'))[:10]
    one, two = root/'p1', root/'p2'
    r1 = _fastcam('run', str(root/'model.pkl'), *map(str, files), '--out', str(one), '--trust', '--bs', '4')
    r2 = _fastcam('run', str(root/'model.pkl'), *map(str, files), '--out', str(two), '--trust', '--bs', '4', '--num-processes', '2')
    assert r1.returncode == 0 and r2.returncode == 0, r2.stderr[-2000:]
    a, b = pd.read_csv(one/'boxes.csv'), pd.read_csv(two/'boxes.csv')
    pd.testing.assert_frame_equal(a, b, atol=1e-5)
    assert len(list((two/'overlays').glob('*.png'))) == 10

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
    assert Path(report).is_file() and Path(report).parent == (tmp_path/'d'/'run').resolve()
    pngs = list((tmp_path/'d'/'run'/'overlays').glob('*.png'))
    assert pngs and all(np.asarray(Image.open(p).convert('RGB')).std() > 10 for p in pngs)   # real pictures
    r = _fastcam('--help')
    assert r.returncode == 0 and 'demo' in r.stdout and 'run' in r.stdout
    r = _fastcam('run', '--help')
    assert r.returncode == 0 and '--num-processes' in r.stdout and '--trust' in r.stdout
    r = _fastcam('explode')
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == "fastcam: unknown command 'explode'; choose one of: demo, run"
