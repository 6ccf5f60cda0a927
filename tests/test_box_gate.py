"The probability gate: a class whose probability is below `min_prob` gets no box, only a row saying so, in `res.boxes()`, get_boxes, get_cams and fastcam run. The probabilities are checked against fastai's own `get_preds`, computed apart from fastcam."
import os
os.environ.setdefault('MPLBACKEND', 'Agg')
import numpy as np, pandas as pd, pytest, torch
from fastai.vision.all import ImageDataLoaders, Resize, vision_learner, resnet18
from fastcam.show import get_boxes
from fastcam.cli import run
import fastcam.callback  # noqa: F401  (learn.get_cams)

@pytest.fixture(scope='module')
def gate(image_folder):
    "A 3-class untrained learner at 32 px (probabilities near 1/3 each), 6 files, and fastai's probabilities of them"
    dls = ImageDataLoaders.from_folder(image_folder, valid_pct=0.25, seed=42, item_tfms=Resize(32), bs=8, num_workers=0)
    torch.manual_seed(0)
    learn = vision_learner(dls, resnet18, pretrained=False)
    files = sorted(image_folder.rglob('*.png'))[::12][:6]
    probs = learn.get_preds(dl=dls.test_dl(files))[0]
    return learn, files, probs

def test_boxes_and_get_cams_gate_every_class(gate):
    learn, files, probs = gate
    mid = float(probs.flatten().sort().values[len(probs.flatten())//2])     # half the (item, class) pairs fall below it
    res = learn.cam(files, target='all')
    df = res.boxes(min_prob=mid, min_area=1)
    np.testing.assert_allclose(df.prob, probs[df['item'], df['class']].numpy(), atol=1e-5)
    assert len(df) == probs.numel()                                         # one row per (item, class): a box or a reason
    assert (df.reason == 'below min_prob').sum() == int((probs < mid).sum()) > 0
    assert df.loc[df.reason == 'below min_prob', 'x0'].isna().all() and df.loc[df.reason == '', 'x0'].notna().all()
    _, cb = learn.get_cams(dl=learn.dls.test_dl(files), target='all', with_boxes=True, min_prob=mid, min_area=1)
    pd.testing.assert_frame_equal(cb.drop(columns='file', errors='ignore'), df.drop(columns='file'), atol=1e-4)
    assert (res.boxes().reason == 'below min_prob').all()                   # the default 0.5: no class of this model reaches it

def test_get_boxes_gates(gate):
    learn, files, probs = gate
    top2 = probs[0].sort(descending=True).values[:2]
    lb = get_boxes(files[0], learn.dls, learn, target='all', show_img=False, min_prob=float(top2.mean()), min_area=1)
    assert len(lb.bbox) == 1 and lb.lbl == [learn.dls.vocab[int(probs[0].argmax())]]   # only the top class is above the gate
    assert lb.df.reason.tolist().count('below min_prob') == 2 and lb.scores[0] <= float(probs[0].max())
    assert len(get_boxes(files[0], learn.dls, learn, show_img=False).bbox) == 0        # the predicted class, below 0.5

def test_fastcam_run_gates_and_writes_the_reason(gate, tmp_path):
    learn, files, probs = gate
    learn.export(tmp_path/'m.pkl')
    mid = float(probs.max(1).values.median())
    run(str(tmp_path/'m.pkl'), *map(str, files), out=str(tmp_path/'out'), trust=True, min_prob=mid, min_area=1, progress=False)
    b = pd.read_csv(tmp_path/'out'/'boxes.csv')
    assert list(b.columns)[:9] == ['file', 'class', 'prob', 'x0', 'y0', 'x1', 'y1', 'score', 'reason'] and b.file.nunique() == len(files)
    top = {str(f): float(p.max()) for f, p in zip(files, probs)}
    for r in b.itertuples():
        assert r.prob == pytest.approx(top[r.file], abs=1e-4)
        assert (r.reason == 'below min_prob') == (r.prob < mid) and pd.isna(r.x0) == (r.prob < mid), r
    assert 0 < (b.reason == 'below min_prob').sum() < len(files)
    coco = pd.read_json(tmp_path/'out'/'boxes.coco.json', typ='series')
    assert len(coco['annotations']) == b.x0.notna().sum()                 # no annotation for a file without a box
