"`fastcam run --truth` (issue 15 item 6): per-box iou against the true boxes, true boxes on the overlays, the COCO results list and COCO AP by pycocotools, checked against hand computations."
import contextlib, io, json, os, shutil
from pathlib import Path
from conftest import exported_dicom_learner
import numpy as np, pandas as pd, pytest, torch
from PIL import Image
from fastai.vision.all import DataBlock, CategoryBlock, ColReader, ColSplitter, Resize, vision_learner
from fastcam.synth import make_dicom_set
from fastcam.items import DicomBlock
from fastcam.cli import tiny_xresnet
from fastcam import cli
from fastcam.truth import Truth, coco_results_list, coco_ap

pycoco = pytest.importorskip('pycocotools', reason="pycocotools is an optional extra: pip install 'fastcam[eval]'")
from pycocotools.coco import COCO

def iou(a, b):
    "IoU of two half-open pixel boxes (x0, y0, x1, y1), by hand"
    w, h = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0)*max(h, 0)
    union = (a[2]-a[0])*(a[3]-a[1]) + (b[2]-b[0])*(b[3]-b[1]) - inter
    return inter/union if union > 0 else 0.

def hand_ap50(dets, gts):
    "COCO's AP at IoU 0.5 for one class, by hand: greedy matching per image in score order, precision envelope, 101 recall points"
    order = sorted(range(len(dets)), key=lambda i: -dets[i][2])      # (image, box, score)
    used, tp = set(), []
    for i in order:
        img, box, _ = dets[i]
        cands = [(iou(box, g), k) for k, (gi, g) in enumerate(gts) if gi == img and k not in used]
        best = max([c for c in cands if c[0] >= 0.5], default=None)
        if best: used.add(best[1])
        tp.append(best is not None)
    tp = np.cumsum(tp); fp = np.arange(1, len(tp)+1) - tp
    rc, pr = tp/len(gts), tp/(tp+fp)
    for i in range(len(pr)-1, 0, -1): pr[i-1] = max(pr[i-1], pr[i])
    q = [pr[np.searchsorted(rc, t, side='left')] if np.searchsorted(rc, t, side='left') < len(pr) else 0. for t in np.linspace(0, 1, 101)]
    return float(np.mean(q))

def test_coco_results_list_loads_and_cocoeval_ap50_equals_a_hand_ap(tmp_path):
    "3 images, 4 true boxes (one missed), 5 detections: a hit, a duplicate, a near miss (IoU < 0.5), a false positive, a hit with a low score"
    gts = [('a.png', [10, 10, 50, 50]), ('a.png', [60, 60, 90, 90]), ('b.png', [0, 0, 20, 40]), ('c.png', [30, 30, 60, 70])]
    dets = [('a.png', [12, 10, 50, 52], .9), ('a.png', [10, 12, 48, 50], .8), ('b.png', [10, 0, 40, 40], .7), ('c.png', [0, 0, 10, 10], .6),
            ('a.png', [60, 58, 92, 90], .3)]
    ids = {'a.png': 11, 'b.png': 22, 'c.png': 33}
    gt = dict(images=[dict(id=i, file_name=f, width=100, height=100) for f, i in ids.items()], categories=[dict(id=5, name='nodule')],
              annotations=[dict(id=k+1, image_id=ids[f], category_id=5, bbox=[b[0], b[1], b[2]-b[0], b[3]-b[1]], area=(b[2]-b[0])*(b[3]-b[1]), iscrowd=0)
                           for k, (f, b) in enumerate(gts)])
    (tmp_path/'gt.json').write_text(json.dumps(gt))
    recs = [dict(file=f'/data/{f}', size=[100, 100], **{'class': 'nodule'}, prob=.9,
                 boxes=[dict(x0=b[0], y0=b[1], x1=b[2], y1=b[3], score=s, **{'class': 'nodule'}) for g, b, s in dets if g == f]) for f in ids]
    truth = Truth(tmp_path/'gt.json')
    res = coco_results_list(recs, ['normal', 'nodule'], truth)
    assert sorted(r['image_id'] for r in res) == [11, 11, 11, 22, 33] and {r['category_id'] for r in res} == {5}
    (tmp_path/'res.json').write_text(json.dumps(res))
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(tmp_path/'gt.json')); dt = coco.loadRes(str(tmp_path/'res.json'))   # pycocotools accepts the file
    assert len(dt.getAnnIds()) == 5
    exp = hand_ap50([(f, b, s) for f, b, s in dets], gts)
    assert 0.2 < exp < 0.9                                   # a case where order and misses matter
    got = coco_ap(recs, ['normal', 'nodule'], truth)
    assert got['coco_ap50'] == pytest.approx(exp, abs=1e-6)
    # the same truth as a boxes CSV gives the same AP (ids made by fastcam, matched by file name)
    pd.DataFrame([dict(file=f, x0=b[0], y0=b[1], x1=b[2], y1=b[3], label='nodule') for f, b in gts]).to_csv(tmp_path/'gt.csv', index=False)
    assert coco_ap(recs, ['normal', 'nodule'], Truth(tmp_path/'gt.csv'))['coco_ap50'] == pytest.approx(exp, abs=1e-6)

@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp('truth')
    learn = exported_dicom_learner(root, n=16)
    make_dicom_set(root/'in', n=8, seed=5)
    return root

def test_run_with_truth(setup, tmp_path, capsys, monkeypatch):
    "--truth boxes.csv: each box's iou is the best hand IoU with the file's rows in the GT file; true boxes go to the overlay; metrics in the report; results list loads"
    root = setup
    gt = pd.read_csv(root/'in'/'boxes.csv')
    draw, drawn = cli._overlay, {}
    def spy(img, m, title, boxes, out, f, vocab, **kw):
        drawn[str(f)] = kw.get('truth')
        return draw(img, m, title, boxes, out, f, vocab, **kw)
    monkeypatch.setattr(cli, '_overlay', spy)
    assert cli.run(str(root/'model.pkl'), str(root/'in'/'images'), out=str(tmp_path/'o'), trust=True, progress=False, truth=str(root/'in'/'boxes.csv'),
                   mode='peak') == 0
    out = capsys.readouterr().out
    assert 'files with truth' in out and 'pointing' in out
    boxes = pd.read_csv(tmp_path/'o'/'boxes.csv')
    assert 'iou' in boxes.columns and boxes.x0.notna().sum() >= 8
    from fastcam.metrics import box_iou
    n_checked = 0
    for r in boxes[boxes.x0.notna()].itertuples():
        rows = gt[gt.file == 'images/' + Path(r.file).name]
        b = [r.x0, r.y0, r.x1, r.y1]
        if not len(rows): assert np.isnan(r.iou); continue           # a negative: not in the GT file
        exp = max(iou(b, g) for g in rows[['x0', 'y0', 'x1', 'y1']].to_numpy().tolist())
        assert r.iou == pytest.approx(exp, abs=1e-6)
        assert r.iou == pytest.approx(float(box_iou(torch.tensor([b], dtype=torch.float), torch.tensor(rows[['x0', 'y0', 'x1', 'y1']].to_numpy(), dtype=torch.float)).max()), abs=1e-6)
        n_checked += 1
    assert n_checked >= 4
    # the overlay renderer got each file's true boxes, as the GT file has them (drawing them is the renderer's business: tests/test_show.py)
    for f, t in drawn.items():
        rows = gt[gt.file == 'images/' + Path(f).name]
        if not len(rows): assert t is None, f
        else: assert np.asarray(t).tolist() == rows[['x0', 'y0', 'x1', 'y1']].to_numpy().tolist(), f
    assert len(drawn) == 8 and sum(t is not None for t in drawn.values()) == gt.file.nunique()
    page = (tmp_path/'o'/'report.html').read_text()
    assert 'Ground truth' in page and 'COCO AP' in page
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(tmp_path/'o'/'boxes.coco.json'))
        dt = coco.loadRes(str(tmp_path/'o'/'boxes.coco-results.json'))
    assert len(dt.getAnnIds()) == boxes.x0.notna().sum()

def test_run_with_coco_truth_takes_its_image_ids(setup, tmp_path, capsys):
    root = setup
    gt = pd.read_csv(root/'in'/'boxes.csv')
    files = sorted((root/'in'/'images').glob('*.dcm'))
    ids = {f.name: 1000 + 7*k for k, f in enumerate(files)}
    coco = dict(images=[dict(id=ids[f.name], file_name=f'images/{f.name}', width=1, height=1) for f in files], categories=[dict(id=9, name='nodule')],
                annotations=[dict(id=k+1, image_id=ids[Path(r.file).name], category_id=9, bbox=[r.x0, r.y0, r.x1-r.x0, r.y1-r.y0], area=(r.x1-r.x0)*(r.y1-r.y0), iscrowd=0)
                             for k, r in enumerate(gt.itertuples())])
    (tmp_path/'gt.json').write_text(json.dumps(coco))
    assert cli.run(str(root/'model.pkl'), str(root/'in'/'images'), out=str(tmp_path/'o'), trust=True, progress=False, truth=str(tmp_path/'gt.json'), mode='peak') == 0
    res = json.loads((tmp_path/'o'/'boxes.coco-results.json').read_text())
    recs = [json.loads(p.read_text()) for p in (tmp_path/'o'/'records').glob('*.json')]
    by_file = {ids[Path(r['file']).name]: r for r in recs}
    assert len(res) == 8 and {d['image_id'] for d in res} == set(ids.values())
    for d in res:   # each detection sits on its own file's box; 'nodule' has the truth's category id, a class the truth lacks ('normal') the next free one
        r = by_file[d['image_id']]
        b = next(b for b in r['boxes'] if [b['x0'], b['y0'], b['x1']-b['x0'], b['y1']-b['y0']] == d['bbox'])
        assert d['category_id'] == {'nodule': 9, 'normal': 10}[b['class']] and d['score'] == b['score']
    with contextlib.redirect_stdout(io.StringIO()): COCO(str(tmp_path/'gt.json')).loadRes(str(tmp_path/'o'/'boxes.coco-results.json'))

def test_a_bad_truth_file_is_one_line(setup, tmp_path, capsys):
    root = setup
    (tmp_path/'gt.csv').write_text('name,a,b\nx,1,2\n')
    assert cli.main(['run', str(root/'model.pkl'), str(root/'in'/'images'), '--out', str(tmp_path/'o'), '--trust', '--truth', str(tmp_path/'gt.csv')]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"fastcam run: can't read --truth {tmp_path/'gt.csv'}: has no file column"), err

def test_a_truth_key_naming_two_files_is_one_line(setup, tmp_path, capsys):
    "Truth keyed by stem (SIIM's ImageId) with two inputs of that stem in two folders: refused before any file, naming both"
    import shutil
    root = setup
    f = sorted((root/'in'/'images').glob('*.dcm'))[0]
    for d in ('a', 'b'): (tmp_path/d).mkdir(); shutil.copy(f, tmp_path/d/f.name)
    pd.DataFrame([dict(file=f.stem, x0=1, y0=1, x1=9, y1=9, label='nodule')]).to_csv(tmp_path/'gt.csv', index=False)
    out = tmp_path/'o'
    assert cli.main(['run', str(root/'model.pkl'), str(tmp_path/'a'), str(tmp_path/'b'), '--out', str(out), '--trust', '--truth', str(tmp_path/'gt.csv')]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"fastcam run: --truth {tmp_path/'gt.csv'}: the ground truth's '{f.stem}' names two items"), err
    assert not (out/'records').exists() or not list((out/'records').glob('*.json'))
