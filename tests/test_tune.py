"The tune step against models and data with a known answer: a hand-made model whose one layer sees the lesion and whose other sees its mirror image."
import json, os
from pathlib import Path
os.environ.setdefault('MPLBACKEND', 'Agg')
import numpy as np, pandas as pd, pytest, torch
from torch import nn
from fastai.vision.all import Learner, CrossEntropyLossFlat
from conftest import frame_learner, labelled_squares
from PIL import Image
from fastcam.tune import recipe_table, read_truth, load_recipe, recipe_path, coco_ap50, stage_ends, layer_candidates, default_recipe
import fastcam.tune, fastcam.callback  # noqa: F401  (patch Learner.tune_boxes, Learner.get_cams)
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
def squares(tmp_path_factory): return labelled_squares(tmp_path_factory, 'squares', _square_set, TwoWay())

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
    from fastcore.script import CliError
    with pytest.raises(CliError, match=r"^fastcam run: --layer stage:-9: layer 'stage:-9': the model has \d stage ends .*; use stage:-1 to stage:-\d$"):
        run(str(tmp_path/'model.pkl'), *[str(o) for o in items], out=str(tmp_path/'bad'), layer='stage:-9', trust=True, progress=False)
    assert not (tmp_path/'bad'/'boxes.csv').exists()   # refused before any file, not one error row per file


class Shy(TwoWay):
    "TwoWay whose 'pos' logit is lowered by 10: the same maps, but p(pos) < 0.5 on every image (the boxes step's gate would box none)"
    def forward(self, x): return super().forward(x) + torch.tensor([5., -5.])

def test_tune_scores_the_maps_ungated(squares):
    "The tune step measures the maps, not the probability gate: a model sure of nothing boxes as well as the confident one (box_acc 1 at layer `a`)"
    root,df,bx,learn = squares
    shy = Learner(learn.dls, Shy(), loss_func=CrossEntropyLossFlat())
    items = [root/f for f in df.file]
    assert shy.cam(items[:2], target='pos').target_probs.max() < 0.01
    t = recipe_table(shy, items, root/'boxes.csv', target='pos', methods=('gradcam',), layers=['a'], tta=(False,), thresholds=(0.5,), progress=False)
    assert t.box_acc.iloc[0] == 1.0 and t.pointing.iloc[0] == 1.0

def test_ap50_ranks_by_the_box_score():
    "AP@0.5 and the AUROC rank the top boxes by the table's `score` alone (it is already prob x mass share): not prob x score, which would order these two the other way"
    from fastcam.tune import _first_boxes
    table = pd.DataFrame(dict(item=[0, 1], target=[0, 0], prob=[0.9, 0.5], x0=[0, 0], y0=[0, 0], x1=[4, 4], y1=[4, 4], score=[0.3, 0.4], reason=['', '']))
    assert [s for _,s in _first_boxes(table, 2)] == [0.3, 0.4]   # prob x score would be 0.27 > 0.2

@pytest.fixture
def tuned(squares):
    "The squares learner with a recipe (layer `a`, threshold 0.3, topk 1) that is not the default; untuned again afterwards"
    root,df,bx,learn = squares
    learn.use_recipe(dict(layer='a', mode='threshold', threshold=0.3, topk=1))
    yield root,df,bx,learn
    learn.use_recipe(None)

def _direct_boxes(learn, f, layer, threshold, mode='threshold'):
    "cam_boxes of Grad-CAM at `layer` for file `f`, computed from the preprocessed batch (not through any recipe), in box `mode` at `threshold`, top box only"
    from fastcam.core import cam
    from fastcam.boxes import cam_boxes
    xb = learn.dls.test_dl([f]).one_batch()[0]
    r = cam(learn.model, xb, layer=layer, target='pos', method='gradcam', vocab=list(learn.dls.vocab), input_grad=mode in ('gradient', 'segment'))
    return cam_boxes(r, [(64, 80)], learn.dls, mode=mode, threshold=threshold, min_area=16, topk=1)[['x0', 'y0', 'x1', 'y1', 'score']]

_cols = ['x0', 'y0', 'x1', 'y1', 'score']

def test_get_boxes_and_cam_boxes_follow_the_recipe_unless_told(tuned):
    "A saved recipe's layer and threshold give exactly the boxes cam_boxes gives at them; an explicit argument wins over the recipe; untuned is the default recipe"
    from fastcam.show import get_boxes
    root,df,bx,learn = tuned
    f = root/bx.file.iloc[0]
    want = _direct_boxes(learn, f, 'a', 0.3).reset_index(drop=True)
    assert want.x0.notna().all() and want.x1.iloc[0] - want.x0.iloc[0] > 14   # at 0.3 the box takes in noise around the 14 px square: unlike 0.7's
    got = get_boxes(f, learn.dls, learn, target='pos', show_img=False).df
    pd.testing.assert_frame_equal(got[_cols].reset_index(drop=True), want)
    res = learn.cam([f], target='pos')
    assert res.layer == 'a' and res.recipe['threshold'] == 0.3
    pd.testing.assert_frame_equal(res.boxes()[_cols].reset_index(drop=True), want)
    _,cams = learn.get_cams(dl=learn.dls.test_dl([f]), target='pos', with_boxes=True)
    pd.testing.assert_frame_equal(cams[_cols].reset_index(drop=True), want)
    # an argument given by the caller wins over the recipe, option by option
    told = _direct_boxes(learn, f, 'a', 0.7).reset_index(drop=True)
    pd.testing.assert_frame_equal(get_boxes(f, learn.dls, learn, target='pos', threshold=0.7, show_img=False).df[_cols].reset_index(drop=True), told)
    pd.testing.assert_frame_equal(res.boxes(threshold=0.7)[_cols].reset_index(drop=True), told)
    assert learn.cam([f], target='pos', layer='b').layer == 'b'
    pd.testing.assert_frame_equal(get_boxes(f, learn.dls, learn, target='pos', layer='b', show_img=False).df[_cols].reset_index(drop=True),
                                  _direct_boxes(learn, f, 'b', 0.3).reset_index(drop=True))
    learn.use_recipe(None)   # untuned: default_recipe (the last spatial layer, 'b' here; its threshold)
    assert learn.cam([f], target='pos').layer == 'b' and learn.cam([f], target='pos').recipe is None
    pd.testing.assert_frame_equal(get_boxes(f, learn.dls, learn, target='pos', show_img=False).df[_cols].reset_index(drop=True),
                                  _direct_boxes(learn, f, 'b', default_recipe['threshold'], default_recipe['mode']).reset_index(drop=True))

def test_recipe_precedence_and_sources(squares, tmp_path):
    "argument > learner's recipe > default_recipe, option by option; `source` names where the recipe came from"
    from fastcam.tune import recipe_args, run_recipe, save_recipe, default_recipe
    root,df,bx,learn = squares
    assert recipe_args(learn, threshold=None, method='layercam') == {**default_recipe, 'method': 'layercam', 'source': 'default_recipe'}
    save_recipe(dict(layer=['a', 'b'], threshold=0.4), tmp_path/'model.pkl')
    learn.use_recipe(tmp_path/'model.pkl')
    try:
        r = recipe_args(learn, threshold=0.6)
        assert (r['layer'], r['threshold'], r['min_area'], r['source']) == (['a', 'b'], 0.6, default_recipe['min_area'], 'model.boxes.json')
        assert learn.cam([root/df.file.iloc[0]], target='pos').layer == 'fused'   # the recipe's two layers: their fused map
        assert run_recipe(tmp_path/'model.pkl', learn)['source'] == 'model.boxes.json'
        assert run_recipe(tmp_path/'model.pkl', learn, use=False) == {**default_recipe, 'source': 'default_recipe'}
        assert run_recipe(tmp_path/'other.pkl', learn)['source'] == "other.pkl's own (model.boxes.json)"
    finally: learn.use_recipe(None)
    with pytest.raises(ValueError, match=r"unknown box recipe key\(s\) \['thresh'\]"): learn.use_recipe(dict(thresh=0.5))

def test_fastcam_tune_then_run(squares, tmp_path, capsys):
    "`fastcam tune` writes model.boxes.json choosing `a` and prints its table; `fastcam run` then boxes the squares with it (run.json says so), --no-recipe does not, and a resume with another recipe refuses"
    from fastcam.cli import main
    root,df,bx,learn = squares
    learn.export(tmp_path/'model.pkl')
    rc = main(['tune', str(tmp_path/'model.pkl'), str(root), '--truth', str(root/'boxes.csv'), '--trust', '--target', 'pos', '--methods', 'gradcam',
               '--layers', 'b|a', '--no-tta', '--thresholds', '0.5,0.7', '--no-progress'])
    printed = capsys.readouterr().out
    assert rc == 0 and f"saved the recipe to {tmp_path/'model.boxes.json'}" in printed and printed.splitlines()[0].split()[:6] == ['method', 'layer', 'tta', 'mode', 'threshold', 'grad_threshold']
    saved = json.loads((tmp_path/'model.boxes.json').read_text())
    assert saved['layer'] == 'a' and saved['metric'] == 'box_acc' and saved['scores']['box_acc'] == 1.0 and saved['n_boxes'] == 5
    assert pd.read_csv(tmp_path/'model.boxes.csv').shape[0] == 20   # 2 layers x (2 thresholds + 2 thresholds x 3 gradient thresholds + 2 segment thresholds)
    files = [str(root/f) for f in bx.file[:3]]
    def run(out, *opts):
        return main(['run', str(tmp_path/'model.pkl'), *files, '--trust', '--target', 'pos', '--out', str(out), '--no-progress', *opts])
    for opts,want,source in (([], True, 'model.boxes.json'), (['--no-recipe'], False, 'default_recipe')):
        out = tmp_path/f'run{len(opts)}'
        assert run(out, *opts) == 0
        info = json.loads((out/'run.json').read_text())
        assert info['recipe']['source'] == source and info['options'].get('recipe') == (source if want else None)   # the default adds no run option
        assert info['options']['threshold'] == (saved['threshold'] if want else default_recipe['threshold']) and info['recipe']['threshold'] == info['options']['threshold']
        got = pd.read_csv(out/'boxes.csv').dropna(subset=['x0'])
        hits = [box_iou(torch.tensor([[g.x0, g.y0, g.x1, g.y1]]), torch.tensor([[t.x0, t.y0, t.x1, t.y1]])).item() >= 0.5
                for t in bx.iloc[:3].itertuples() for g in got[got.file.str.endswith(t.file)].itertuples()]
        assert len(hits) == 3 and all(hits) == want and any(hits) == want
    assert 'box recipe' in (tmp_path/'run0'/'report.html').read_text()
    assert run(tmp_path/'run0', '--no-recipe') == 2   # the folder's records were made with the tuned recipe
    assert 'recipe: model.boxes.json -> null' in capsys.readouterr().err
    assert run(tmp_path/'run0', '--threshold', str(saved['threshold'])) == 0   # an option given equal to the recipe's: the same run, resumed
    assert '0 done, 3 skipped (done before)' in capsys.readouterr().out
    (tmp_path/'mine.json').write_text(json.dumps(dict(layer='b', threshold=0.5)))   # --recipe: a JSON kept elsewhere
    assert run(tmp_path/'run3', '--recipe', str(tmp_path/'mine.json')) == 0
    info = json.loads((tmp_path/'run3'/'run.json').read_text())
    assert (info['recipe']['source'], info['options']['layer'], info['options']['threshold'], info['options']['recipe']) == ('mine.json', 'b', 0.5, 'mine.json')
    assert run(tmp_path/'run4', '--recipe', str(tmp_path/'mine.json'), '--no-recipe') == 2
    assert capsys.readouterr().err.strip() == 'fastcam run: --recipe and --no-recipe contradict each other; give one'
    (tmp_path/'mirror.json').write_text(json.dumps(dict(layer='b', threshold=0.5, tta=True)))   # --no-tta switches off a recipe's mirroring alone
    for opts,tta in (([], True), (['--no-tta'], False)):
        out = tmp_path/f'mirror{len(opts)}'
        assert run(out, '--recipe', str(tmp_path/'mirror.json'), '--save-maps', *opts) == 0
        info = json.loads((out/'run.json').read_text())
        assert (info['options']['tta'], info['options']['layer'], info['options']['threshold']) == (tta, 'b', 0.5)
        ref = learn.cam(files, layer='b', target='pos', tta=tta)
        for f,m in zip(files, ref.maps): np.testing.assert_allclose(np.load(next((out/'maps').glob(f'{Path(f).stem}_*.npy'))), m.numpy(), atol=1e-5)
    assert not np.allclose(learn.cam(files, layer='b', target='pos', tta=True).maps, learn.cam(files, layer='b', target='pos', tta=False).maps)   # tta changes b's maps
    assert run(tmp_path/'run5', '--tta', '--no-tta') == 2
    assert capsys.readouterr().err.strip() == 'fastcam run: --tta and --no-tta contradict each other; give one'

def test_fastcam_tune_errors(squares, tmp_path, capsys):
    "One line naming the problem: a missing truth, no labelled file among FILES, a bad metric"
    from fastcam.cli import main
    root,df,bx,learn = squares
    learn.export(tmp_path/'model.pkl')
    pd.DataFrame(dict(file=['elsewhere.png'], x0=[1], y0=[1], x1=[5], y1=[5])).to_csv(tmp_path/'other.csv', index=False)
    for args,msg in ((['--truth', str(tmp_path/'nope.csv')], 'fastcam tune: --truth'), ([], '--truth is needed'),
                     (['--truth', str(tmp_path/'other.csv')], 'none of the 10 items is named in the ground truth'),
                     (['--truth', str(root/'boxes.csv'), '--metric', 'f1'], "--metric 'f1'")):
        assert main(['tune', str(tmp_path/'model.pkl'), str(root), '--trust', '--no-progress', *args]) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1, err

def test_callback_fuses_a_recipes_layers(squares):
    "A recipe naming two layers: get_cams (GradCAMCallback inside get_preds) gives the mean of the two layers' normalised maps, as learn.cam(fused=True) does"
    from fastcam.core import normalize_maps
    root,df,bx,learn = squares
    files = [root/f for f in df.file[:4]]
    a,b = learn.cam(files, target='pos', layer='a', tta=False),learn.cam(files, target='pos', layer='b', tta=False)
    learn.use_recipe(dict(layer=['a', 'b']))
    try: got = learn.get_cams(dl=learn.dls.test_dl(files), target='pos')
    finally: learn.use_recipe(None)
    assert got.layer == 'fused' and got.recipe['layer'] == ['a', 'b']
    assert torch.allclose(got.maps, (normalize_maps(a.maps) + normalize_maps(b.maps))/2, atol=1e-6)

def test_oracle_box_acc_is_each_item_at_its_own_best_threshold(tmp_path):
    "Two positives built so that one is boxed right only at 0.5 and the other only at 0.8: each threshold's box_acc is 0.5, the oracle's 1"
    rng,rows,boxes = np.random.default_rng(1),[],[]
    for i in range(4):
        im = rng.normal(50, 4, (64, 80)).clip(0, 255)
        if i==0:   # a 14x14 square (230) with a 24 px wide dimmer band (170) to its right: at 0.5 the box takes the band too (IoU 14/38)
            im[20:34, 10:24] = 230; im[20:34, 24:48] = 170
        if i==1:   # a 14x14 square (170) with a 6x6 core (230): at 0.8 only the core is boxed (IoU 36/196)
            im[20:34, 10:24] = 170; im[24:30, 14:20] = 230
        if i < 2: boxes.append(dict(file=f'im{i}.png', x0=10, y0=20, x1=24, y1=34))
        Image.fromarray(im.astype(np.uint8)).convert('RGB').save(tmp_path/f'im{i}.png')
        rows.append(dict(file=f'im{i}.png', label='pos' if i < 2 else 'neg', is_valid=False))
    df = pd.DataFrame(rows)
    learn = frame_learner(tmp_path, df, TwoWay(), 64)
    gt = {str(tmp_path/b['file']): [[b['x0'], b['y0'], b['x1'], b['y1']]] for b in boxes}
    t = recipe_table(learn, [tmp_path/f for f in df.file], gt, target='pos', methods=('gradcam',), layers=['a'], tta=(False,),
                     thresholds=(0.5, 0.8), modes=('threshold',), min_area=4, progress=False).set_index('threshold')
    assert t.box_acc.to_dict() == {0.5: 0.5, 0.8: 0.5}
    assert (t.oracle_box_acc == 1.0).all()

def test_a_truth_key_that_names_two_items_is_refused(tmp_path):
    "SIIM-style truth keyed by stem: a/case1.png and b/case1.png would both get case1's boxes; refused in one line naming both"
    for d in ('a', 'b'):
        (tmp_path/d).mkdir(); Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path/d/'case1.png')
    items = [tmp_path/'a'/'case1.png', tmp_path/'b'/'case1.png']
    with pytest.raises(ValueError, match=r"^the ground truth's 'case1' names two items, .*a/case1.png and .*b/case1.png; key the truth by a longer path"):
        fastcam.tune._gts_of(items, {'case1': [[1, 1, 4, 4]]})
    g = fastcam.tune._gts_of(items, {'a/case1.png': [[1, 1, 4, 4]], 'b/case1.png': [[2, 2, 6, 6]]})   # keyed by folder and name: each its own
    assert [b.tolist() for b in g] == [[[1, 1, 4, 4]], [[2, 2, 6, 6]]]

def test_one_file_as_a_relative_and_an_absolute_path_is_one_item(tmp_path, monkeypatch):
    "The same file named twice, relative and absolute, is one item: both get its truth, nothing is refused"
    (tmp_path/'a').mkdir(); Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path/'a'/'case1.png')
    monkeypatch.chdir(tmp_path)
    g = fastcam.tune._gts_of(['a/case1.png', tmp_path/'a'/'case1.png'], {'case1': [[1, 1, 4, 4]]})
    assert [b.tolist() for b in g] == [[[1, 1, 4, 4]], [[1, 1, 4, 4]]]

def test_boxes_truth_does_not_open_the_items(tmp_path):
    "A boxes CSV or COCO truth needs no image size: items are not opened (a file that is not there yet is no error); RLE masks need them"
    pd.DataFrame([dict(file='gone.png', x0=1, y0=1, x1=5, y1=5)]).to_csv(tmp_path/'gt.csv', index=False)
    g = fastcam.tune._gts_of([tmp_path/'gone.png', tmp_path/'other.png'], tmp_path/'gt.csv')
    assert [b.tolist() for b in g] == [[[1, 1, 5, 5]], []]
    pd.DataFrame(dict(ImageId=['gone'], EncodedPixels=['1 2'])).to_csv(tmp_path/'rle.csv', index=False)
    from fastcam.items import ItemError
    with pytest.raises(ItemError, match="gone.png: no such file"): fastcam.tune._gts_of([tmp_path/'gone.png'], tmp_path/'rle.csv')   # a mask's size comes from its image
