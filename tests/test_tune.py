"The tune step against models and data with a known answer: a hand-made model whose one layer sees the lesion and whose other sees its mirror image."
import json, os
os.environ.setdefault('MPLBACKEND', 'Agg')
import numpy as np, pandas as pd, pytest, torch
from torch import nn
from PIL import Image
from fastai.vision.all import DataBlock, ImageBlock, CategoryBlock, ColReader, ColSplitter, Resize, Learner, CrossEntropyLossFlat
from fastcam.tune import recipe_table, read_truth, load_recipe, recipe_path, coco_ap50, stage_ends, layer_candidates
import fastcam.tune  # noqa: F401  (patches Learner.tune_boxes)
from fastcam.metrics import box_iou, rle_encode

class TwoWay(nn.Module):
    "logit of 'pos' = mean brightness seen by `a` (the image) + mean brightness seen by `b` (the image mirrored left-right)"
    def __init__(self):
        super().__init__()
        self.a,self.b = nn.Conv2d(3, 1, 1, bias=False),nn.Conv2d(3, 1, 1, bias=False)
        for c in (self.a, self.b): nn.init.constant_(c.weight, 1/3)
    def forward(self, x):
        s = self.a(x).mean((1, 2, 3)) + self.b(x.flip(-1)).mean((1, 2, 3))
        return torch.stack([-s, s], 1)

def _square_set(root, n=10, seed=0):
    "PNGs 64 rows x 80 cols: dark noise and (on positives) a bright 14x14 square in the left third; the truth table"
    rng,rows,boxes = np.random.default_rng(seed),[],[]
    for i in range(n):
        im = rng.normal(50, 8, (64, 80)).clip(0, 255)
        pos = i % 2 == 0
        if pos:
            x0,y0 = int(rng.integers(3, 12)),int(rng.integers(4, 46))
            im[y0:y0+14, x0:x0+14] = 230
            boxes.append(dict(file=f'im{i}.png', x0=x0, y0=y0, x1=x0+14, y1=y0+14))
        Image.fromarray(im.astype(np.uint8)).convert('RGB').save(root/f'im{i}.png')
        rows.append(dict(file=f'im{i}.png', label='pos' if pos else 'neg', is_valid=i >= n-2))
    return pd.DataFrame(rows),pd.DataFrame(boxes)

@pytest.fixture(scope='module')
def squares(tmp_path_factory):
    root = tmp_path_factory.mktemp('squares')
    df,bx = _square_set(root)
    bx.to_csv(root/'boxes.csv', index=False)
    dls = DataBlock(blocks=(ImageBlock, CategoryBlock), get_x=ColReader('file', pref=root), get_y=ColReader('label'),
                    splitter=ColSplitter('is_valid'), item_tfms=Resize(48, method='squish')).dataloaders(df, bs=4, num_workers=0)
    learn = Learner(dls, TwoWay(), loss_func=CrossEntropyLossFlat())
    return root,df,bx,learn

def test_tune_chooses_the_layer_that_sees_the_lesion(squares, tmp_path):
    root,df,bx,learn = squares
    items = [root/f for f in df.file]
    table = learn.tune_boxes(items, root/'boxes.csv', target='pos', methods=('gradcam',), layers=['b', 'a'], tta=(False,),
                             thresholds=(0.5, 0.7), save=tmp_path/'model.pkl', progress=False)
    assert table.iloc[0]['layer'] == 'a' and learn.box_recipe['layer'] == 'a'
    best = table.groupby('layer')[['box_acc', 'pointing']].max()
    # the known answer: `a`'s map is the image's brightness, so its box is the square; `b`'s is the mirror image's, 40+ px away
    assert best.loc['a'].tolist() == [1.0, 1.0] and best.loc['b'].tolist() == [0.0, 0.0]
    assert json.loads((tmp_path/'model.boxes.json').read_text())['layer'] == 'a'
    assert load_recipe(tmp_path/'model.pkl')['threshold'] in (0.5, 0.7)
    assert recipe_path(tmp_path/'model.pkl') == tmp_path/'model.boxes.json'

def test_recipe_table_counts_against_the_truth(squares):
    "box_acc of `a` at each threshold equals the share of positives whose square a hand-made brightness box overlaps (IoU >= 0.5)"
    root,df,bx,learn = squares
    items = [root/f for f in df.file]
    t = recipe_table(learn, items, {str(root/r.file): [[r.x0, r.y0, r.x1, r.y1]] for r in bx.itertuples()}, target='pos',
                     methods=('gradcam',), layers=['a'], tta=(False,), thresholds=(0.5,), progress=False)
    assert t.n_items.iloc[0] == 10 and t.n_boxes.iloc[0] == 5
    assert t.box_acc.iloc[0] == 1.0 and t.pointing.iloc[0] == 1.0 and t.max_box_acc_v2.iloc[0] > 0.6
    assert t.ap50.iloc[0] == pytest.approx(1.0, abs=0.01)   # one correct box per positive; negatives' boxes rank below (lower prob)

def test_read_truth_formats(tmp_path):
    "CSV, COCO and SIIM RLE give the same boxes for one square"
    m = np.zeros((20, 30), bool); m[4:9, 10:17] = True
    pd.DataFrame(dict(file=['x.png'], x0=[10], y0=[4], x1=[17], y1=[9])).to_csv(tmp_path/'b.csv', index=False)
    (tmp_path/'c.json').write_text(json.dumps(dict(images=[dict(id=3, file_name='x.png', width=30, height=20)],
                                                   annotations=[dict(id=1, image_id=3, category_id=1, bbox=[10, 4, 7, 5])], categories=[dict(id=1, name='f')])))
    pd.DataFrame(dict(ImageId=['x.png'], EncodedPixels=[rle_encode(m)])).to_csv(tmp_path/'r.csv', index=False)
    for f in ('b.csv', 'c.json', 'r.csv'):
        assert read_truth(tmp_path/f, sizes={'x.png': (20, 30)})['x.png'].tolist() == [[10, 4, 17, 9]], f
    with pytest.raises(FileNotFoundError, match='ground truth .* does not exist'): read_truth(tmp_path/'nope.csv')

def test_coco_ap50_by_hand():
    "Two images with one true box each; detections ranked 0.9 (hit), 0.8 (miss), 0.7 (hit): AP = 1*0.5 + (2/3)*0.5 by the 101-point rule ~ 0.835"
    gts = [[[0, 0, 10, 10]], [[20, 20, 30, 30]]]
    dets = [([[0, 0, 10, 10], [50, 50, 60, 60]], [0.9, 0.8]), ([[20, 20, 30, 30]], [0.7])]
    rec = np.linspace(0, 1, 101)
    prec = np.where(rec <= 0.5, 1.0, np.where(rec <= 1.0, 2/3, 0.))
    assert coco_ap50(dets, gts, [(100, 100)]*2) == pytest.approx(prec.mean(), abs=1e-6)

def test_stage_ends_of_a_torchvision_resnet():
    from torchvision.models import resnet18
    ends = stage_ends(resnet18(), torch.zeros(1, 3, 64, 64))
    assert ends == ['relu', 'layer1', 'layer2', 'layer3', 'layer4']
    assert layer_candidates(len(ends))[:3] == ['stage:-1', 'stage:-2', 'stage:-3']
    from fastcam.core import find_layer
    m = resnet18()
    assert [find_layer(m, s, torch.zeros(1, 3, 64, 64))[1] for s in ('stage:-1', 'stage:-2', 'stage:-3')] == [m.layer4, m.layer3, m.layer2]

def test_stage_names_give_the_maps_of_those_modules(tmp_path):
    "learn.cam and fastcam run with 'stage:-2' (and a fused list of stages) give the maps of the modules stage_ends names, found independently here"
    from conftest import exported_dicom_learner
    from fastcam.core import stage_ends
    from fastcam.cli import run
    learn = exported_dicom_learner(tmp_path, n=8)
    items = sorted((tmp_path/'train').rglob('*.dcm'))[:4]
    xb = learn.dls.test_dl(items[:1]).one_batch()[0]
    ends = stage_ends(learn.model, xb)
    a,b = learn.cam(items, layer='stage:-2'),learn.cam(items, layer=ends[-2])
    assert a.layer == ends[-2] and torch.equal(a.maps, b.maps)
    f,g = learn.cam(items, layer=['stage:-2', 'stage:-1'], fused=True),learn.cam(items, layer=ends[-2:], fused=True)
    assert torch.allclose(f.maps, g.maps)
    with pytest.raises(ValueError, match="integer K"): learn.cam(items, layer='stage:two')
    run(str(tmp_path/'model.pkl'), *[str(o) for o in items], out=str(tmp_path/'out'), layer='stage:-2', trust=True, progress=False)
    info = json.loads((tmp_path/'out'/'run.json').read_text())
    assert 'stage:-2' in json.dumps(info)
