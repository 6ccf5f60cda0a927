"Gradient-refined boxes (`fastcam.refine`, box mode 'gradient') against a hand-made model with a known answer: its class score reads a bright square through a layer of 12x12 block averages, so the map is 4x4 cells and the input gradient is the square itself."
import json, os
os.environ.setdefault('MPLBACKEND', 'Agg')
import numpy as np, pandas as pd, pytest, torch
from torch import nn
from conftest import labelled_squares
from PIL import Image
from fastcam.core import cam
from fastcam.metrics import box_iou
from fastcam.show import get_boxes
import fastcam.tune, fastcam.callback  # noqa: F401  (patch Learner.tune_boxes, Learner.get_cams)

class BrightBlocks(nn.Module):
    "logit of 'pos' = 100 x the mean over the image of relu(gray - 0.5), read through `blocks` (12x12 averages): only bright pixels count"
    def __init__(self):
        super().__init__()
        self.blocks = nn.AvgPool2d(12)
        self.head = nn.Linear(1, 2)
        with torch.no_grad(): self.head.weight.copy_(torch.tensor([[-100.], [100.]])); self.head.bias.copy_(torch.tensor([2., -2.]))
    def forward(self, x):
        return self.head(self.blocks((x.mean(1, keepdim=True) - 0.5).relu()).mean((2, 3)))

SIDE = 16   # the square's side in original pixels (12 model-input pixels: one block)

def _square_set(root, n=8, seed=1):
    "64x64 PNGs: dark noise and (on positives) a bright square straddling the blocks' grid; the truth table"
    rng,rows,boxes = np.random.default_rng(seed),[],[]
    for i in range(n):
        im = rng.normal(60, 10, (64, 64)).clip(0, 110)
        if i % 2 == 0:
            x0,y0 = (16*int(rng.integers(0, 3)) + int(rng.integers(6, 11)) for _ in range(2))   # about half a block off the blocks' 16-px grid (original pixels)
            im[y0:y0+SIDE, x0:x0+SIDE] = 240
            boxes.append(dict(file=f'im{i}.png', x0=x0, y0=y0, x1=x0+SIDE, y1=y0+SIDE))
        Image.fromarray(im.astype(np.uint8)).convert('RGB').save(root/f'im{i}.png')
        rows.append(dict(file=f'im{i}.png', label='pos' if i % 2 == 0 else 'neg', is_valid=i >= n-2))
    return pd.DataFrame(rows),pd.DataFrame(boxes)

@pytest.fixture(scope='module')
def squares(tmp_path_factory): return labelled_squares(tmp_path_factory, 'refine', _square_set, BrightBlocks())

def _ious(df, bx, root=None):
    "Per true square, the IoU of the file's first box with it (0 without a box)"
    out = []
    for t in bx.itertuples():
        got = df[df['file'].astype(str).str.endswith(t.file) & df['x0'].notna()] if 'file' in df else df
        b = got.iloc[0] if len(got) else None
        out.append(0. if b is None else box_iou(torch.tensor([[int(b.x0), int(b.y0), int(b.x1), int(b.y1)]]), torch.tensor([[t.x0, t.y0, t.x1, t.y1]])).item())
    return np.array(out)

# The engine: d score / d input from the maps' backward, checked against plain autograd

def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))

@pytest.mark.parametrize('method', ['gradcam', 'cam', 'eigencam'])
def test_input_grad_is_autograd_of_each_target_score(method):
    "Each target slot's input_grad is torch.autograd.grad of that class's logit summed over the channels, whatever the method needs; the model, the input and grad mode are left as they were"
    m,x = _net(),torch.randn(2, 3, 16, 16)
    m.train()
    r = cam(m, x, layer='4', target='all', method=method, input_grad=True)
    m.eval()
    xx = x.clone().requires_grad_()
    o = m(xx)
    for j in range(3):
        g, = torch.autograd.grad(o[:, j].sum(), xx, retain_graph=True)
        torch.testing.assert_close(r.input_grad[:, j], g.sum(1))
    m.train()
    assert m.training and m[1].training and not x.requires_grad and torch.is_grad_enabled()
    assert all(p.grad is None for p in m.parameters()) and not any(mod._forward_hooks for mod in m.modules())
    assert cam(m, x, layer='4').input_grad is None   # only when asked

def test_input_grad_with_tta_averages_the_mirror():
    "With tta, input_grad is the mean of the item's gradient and its mirror image's gradient mirrored back (both by autograd)"
    m,x = _net().eval(),torch.randn(2, 3, 16, 16)
    r = cam(m, x, layer='4', target=1, tta=True, input_grad=True)
    def g(v):
        v = v.clone().requires_grad_()
        return torch.autograd.grad(m(v)[:, 1].sum(), v)[0].sum(1)
    torch.testing.assert_close(r.input_grad[:, 0], (g(x) + g(x.flip(-1)).flip(-1))/2)

def test_input_grad_state_restored_when_the_engine_raises():
    "A bad target raises its one-line error; grad mode, hooks and the input's requires_grad are as before, under no_grad too"
    m,x = _net().eval(),torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        with pytest.raises((ValueError, IndexError)): cam(m, x, layer='4', target=7, input_grad=True)
        assert not torch.is_grad_enabled()
    assert not x.requires_grad and not any(mod._forward_hooks for mod in m.modules()) and all(p.grad is None for p in m.parameters())
    with pytest.raises(ValueError, match='input_grad=True needs a floating-point input'): cam(m, torch.zeros(1, 3, 16, 16, dtype=torch.long), layer='4', input_grad=True)

# The boxes: the square, not the map's cells

def test_gradient_boxes_find_the_square(squares):
    "Known answer: every gradient-narrowed box overlaps its square with IoU >= 0.7; the map's own boxes at any threshold do not (its cells are 16 px, the squares straddle them)"
    root,df,bx,learn = squares
    files = [root/f for f in bx.file]
    res = learn.cam(files, layer='blocks', target='pos', input_grad=True)
    fine = _ious(res.boxes(mode='gradient', threshold=0.3, grad_threshold=0.3, min_prob=0.), bx)
    assert (fine >= 0.7).all(), fine
    for t in (0.3, 0.5, 0.8):
        assert _ious(res.boxes(mode='threshold', threshold=t, topk=1, min_prob=0.), bx).mean() < 0.5
    with pytest.raises(ValueError, match=r"this result does not carry: make the maps with learn.cam\(\.\.\., input_grad=True\)"):
        learn.cam(files[:1], layer='blocks', target='pos', input_grad=False).boxes(mode='gradient')
    with pytest.raises(ValueError, match='grad_threshold=30 is not a fraction'): res.boxes(mode='gradient', grad_threshold=30)

def test_gradient_recipe_everywhere(squares, tmp_path):
    "A recipe with mode 'gradient' makes learn.cam keep the input gradient by itself, and res.boxes(), get_boxes and get_cams(with_boxes=True) box the squares with it"
    root,df,bx,learn = squares
    files = [root/f for f in bx.file]
    learn.use_recipe(dict(layer='blocks', mode='gradient', threshold=0.3, grad_threshold=0.3))
    try:
        res = learn.cam(files, target='pos')
        assert res.input_grad is not None and res.input_grad.shape == (len(files), 1, 48, 48)
        assert (_ious(res.boxes(min_prob=0.), bx) >= 0.7).all()
        for f,t in zip(files, bx.itertuples()):
            lb = get_boxes(f, learn.dls, learn, target='pos', show_img=False, min_prob=0.)
            assert box_iou(torch.tensor(lb.df[['x0', 'y0', 'x1', 'y1']].to_numpy(np.int64)[:1]), torch.tensor([[t.x0, t.y0, t.x1, t.y1]])).item() >= 0.7
        pos = df[df.label=='pos'].reset_index(drop=True)
        dl = learn.dls.test_dl(pos, with_labels=False)
        _,boxes = learn.get_cams(dl, target='pos', with_boxes=True, min_prob=0.)
        assert (_ious(boxes.assign(file=[str(pos.file[i]) for i in boxes['item']]), bx) >= 0.7).all()
    finally: learn.use_recipe(None)
    with pytest.raises(ValueError, match='box recipe grad_threshold 2 is outside 0..1'): learn.use_recipe(dict(mode='gradient', grad_threshold=2))
    with pytest.raises(ValueError, match="box recipe mode 'grad': use 'threshold', 'peak', 'gradient'"): learn.use_recipe(dict(mode='grad'))

def test_tune_chooses_the_gradient_mode(squares, tmp_path):
    "Known answer for the tune step: on these squares the gradient-narrowed boxes hit and the map's do not, so it chooses mode 'gradient' and saves its thresholds"
    root,df,bx,learn = squares
    t = learn.tune_boxes([root/f for f in df.file], root/'boxes.csv', target='pos', methods=('gradcam',), layers=['blocks'], tta=(False,),
                         thresholds=(0.3, 0.5), grad_thresholds=(0.3,), save=tmp_path/'model.pkl', progress=False)
    try:
        assert t.iloc[0]['mode'] == 'gradient' and t.iloc[0]['box_acc'] == 1.0
        assert t[t['mode']=='threshold']['box_acc'].max() < 0.5 and t['grad_threshold'].isna().sum() == 2
        saved = json.loads((tmp_path/'model.boxes.json').read_text())
        assert (saved['mode'], saved['grad_threshold']) == ('gradient', 0.3)
    finally: learn.use_recipe(None)

def test_fastcam_run_gradient_mode(squares, tmp_path, capsys):
    "`fastcam run --mode gradient` boxes the squares (boxes.csv), records grad_threshold in run.json; --grad-threshold without it is a one-line error"
    from fastcam.cli import main
    root,df,bx,learn = squares
    learn.export(tmp_path/'model.pkl')
    run = lambda out, *o: main(['run', str(tmp_path/'model.pkl'), *[str(root/f) for f in bx.file], '--trust', '--target', 'pos', '--layer', 'blocks',
                                '--min-prob', '0', '--out', str(out), '--no-progress', *o])
    assert run(tmp_path/'g', '--mode', 'gradient', '--threshold', '0.3', '--grad-threshold', '0.3') == 0
    got = pd.read_csv(tmp_path/'g'/'boxes.csv')
    assert (_ious(got, bx) >= 0.7).all()
    opts = json.loads((tmp_path/'g'/'run.json').read_text())['options']
    assert (opts['mode'], opts['grad_threshold']) == ('gradient', 0.3)
    assert run(tmp_path/'t', '--mode', 'threshold', '--threshold', '0.3') == 0 and 'grad_threshold' not in json.loads((tmp_path/'t'/'run.json').read_text())['options']
    capsys.readouterr()
    assert run(tmp_path/'x', '--mode', 'threshold', '--grad-threshold', '0.3') == 2
    assert capsys.readouterr().err.strip() == "fastcam run: --grad-threshold is for --mode gradient or segment, but this run boxes with mode 'threshold'"
    assert run(tmp_path/'y', '--mode', 'grad') == 2
    assert capsys.readouterr().err.strip() == "fastcam run: --mode must be 'threshold', 'peak', 'gradient' or 'segment', not 'grad'"
    assert main(['tune', str(tmp_path/'model.pkl'), str(root), '--truth', str(root/'boxes.csv'), '--trust', '--modes', 'threshold,grad']) == 2
    assert capsys.readouterr().err.strip() == "fastcam tune: --modes 'threshold,grad': use threshold, gradient and/or segment, separated by commas"

# A threshold belongs to its box mode

def _ramp_result(recipe=None):
    "A hand-made result: one 10x10 map rising by columns (x/9), an input gradient of 1 everywhere (the gradient box is its whole region), a flat input (one segment: background), prob 0.9"
    from fastcam.core import CamResult
    m = (torch.arange(10.)/9).expand(10, 10)[None, None].clone()
    return CamResult(m, torch.tensor([[1]]), torch.tensor([[0.1, 0.9]]), vocab=['neg', 'pos'], input_size=(10, 10), orig_sizes=[(10, 10)],
                     input_grad=torch.ones(1, 1, 10, 10), input_image=torch.zeros(1, 10, 10), recipe=recipe)

def _box(df): return df[['x0', 'y0', 'x1', 'y1']].to_numpy(np.int64).tolist()

def test_a_mode_asked_for_alone_boxes_at_its_own_threshold():
    "Known answer (columns x/9 >= t are x >= 9t): 'gradient' alone boxes at 0.7 (columns 7-9), 'segment' at its own threshold, the plain regions at 0.8 (8-9); a recipe's threshold stays with its own mode; the default is 'segment', or the plain regions for a result without its input"
    from fastcam.tune import default_recipe, mode_thresholds
    res = _ramp_result()
    seg = [[int(np.ceil(9*mode_thresholds['segment'] - 1e-9)), 0, 10, 10]]   # columns x >= 9t
    assert _box(res.boxes()) == _box(res.boxes(mode='segment')) == seg   # the flat input's one segment is background: the region's gradient box
    assert _box(res.boxes(mode='threshold')) == [[8, 0, 10, 10]]
    assert _box(res._with(input_grad=None, input_image=None).boxes()) == [[8, 0, 10, 10]]   # maps made without the input (the training callback, cam()): the map's own regions
    assert _box(res.boxes(mode='gradient')) == [[7, 0, 10, 10]]
    assert _box(res.boxes(mode='gradient', threshold=0.8)) == [[8, 0, 10, 10]]
    plain = _ramp_result(dict(default_recipe, mode='threshold', threshold=0.5))   # tuned for the plain regions: columns 5-9
    assert _box(plain.boxes()) == [[5, 0, 10, 10]] and _box(plain.boxes(mode='gradient')) == [[7, 0, 10, 10]]
    grad = _ramp_result(dict(default_recipe, mode='gradient', threshold=0.6))   # tuned for the gradient mode: columns 6-9, asked for or not
    assert _box(grad.boxes()) == _box(grad.boxes(mode='gradient')) == [[6, 0, 10, 10]] and _box(grad.boxes(mode='threshold')) == [[8, 0, 10, 10]]

def test_a_mode_given_alone_takes_its_threshold_in_recipes_and_runs(squares, tmp_path):
    "learn.use_recipe(dict(mode='gradient')) and `fastcam run --mode gradient` box at the mode's 0.7; beside a plain recipe at 0.5, --mode gradient does too, and the plain mode keeps 0.5"
    from fastcam.cli import main
    from fastcam.tune import learner_recipe, recipe_args, save_recipe
    root,df,bx,learn = squares
    try:
        assert learner_recipe(learn.use_recipe(dict(mode='gradient')))['threshold'] == 0.7
        learn.use_recipe(dict(mode='threshold', threshold=0.5))
        assert recipe_args(learn, mode='gradient')['threshold'] == 0.7 and recipe_args(learn, mode='threshold')['threshold'] == 0.5
        assert recipe_args(learn, mode='gradient', threshold=0.4)['threshold'] == 0.4
    finally: learn.use_recipe(None)
    learn.export(tmp_path/'model.pkl')
    run = lambda out, *o: main(['run', str(tmp_path/'model.pkl'), str(root/bx.file[0]), '--trust', '--target', 'pos', '--layer', 'blocks',
                                '--min-prob', '0', '--out', str(out), '--no-progress', *o])
    opts = lambda out: json.loads((out/'run.json').read_text())['options']
    assert run(tmp_path/'g', '--mode', 'gradient') == 0 and opts(tmp_path/'g')['threshold'] == 0.7
    save_recipe(dict(layer='blocks', mode='threshold', threshold=0.5), tmp_path/'model.pkl')
    assert run(tmp_path/'r', '--mode', 'gradient') == 0 and opts(tmp_path/'r')['threshold'] == 0.7
    assert run(tmp_path/'p') == 0 and (opts(tmp_path/'p')['mode'], opts(tmp_path/'p')['threshold']) == ('threshold', 0.5)

# Segment boxes: the image segment the input gradient points to in each region

def test_input_image_is_the_model_input_the_maps_saw(squares):
    "input_image (kept with input_grad) is the model input's channel mean, as test_dl makes it; slicing, joining, moving and tta keep each item's own"
    from fastcam.core import CamResult
    root,df,bx,learn = squares
    files = [root/f for f in df.file[:4]]
    xb = torch.cat([b[0] for b in learn.dls.test_dl(files, bs=2)]).as_subclass(torch.Tensor)
    res = learn.cam(files, layer='blocks', target='pos', input_grad=True, bs=2)
    torch.testing.assert_close(res.input_image, xb.float().mean(1))
    torch.testing.assert_close(res[1:3].input_image, xb[1:3].mean(1)); torch.testing.assert_close(CamResult.cat([res[:1], res[3:]]).input_image, xb[[0, 3]].mean(1))
    assert res.to('cpu').input_image is not None and learn.cam(files, layer='blocks', target='pos', input_grad=False).input_image is None
    assert learn.cam(files, layer='blocks', target='pos').input_image is not None   # kept by default: the default box mode 'segment' needs it
    torch.testing.assert_close(learn.cam(files, layer='blocks', target='pos', input_grad=True, tta=True).input_image, xb.mean(1))   # not its mirror

def test_segment_boxes_hit_the_squares(squares):
    "Known answer: each square is an image segment, and the input gradient lies in it: every segment box hits its square (IoU >= 0.5) where the map's own boxes do not"
    root,df,bx,learn = squares
    files = [root/f for f in bx.file]
    res = learn.cam(files, layer='blocks', target='pos', input_grad=True)
    seg = _ious(res.boxes(mode='segment', threshold=0.3, min_prob=0.), bx)
    assert (seg >= 0.5).all() and seg.mean() > 0.7, seg
    assert _ious(res.boxes(mode='threshold', threshold=0.3, topk=1, min_prob=0.), bx).mean() < 0.5
    with pytest.raises(ValueError, match=r"^mode='segment' boxes with the model's input gradient, which this result does not carry"):
        learn.cam(files[:1], layer='blocks', target='pos', input_grad=False).boxes(mode='segment')
    with pytest.raises(ValueError, match=r"^mode='segment' cuts the model input into segments, which this result does not carry"):
        res._with(input_image=None).boxes(mode='segment')

def test_segment_recipe_everywhere(squares, tmp_path, capsys):
    "A 'segment' recipe keeps the input gradient and input by itself in learn.cam, get_boxes and get_cams; fastcam run --mode segment boxes the squares; the tune step's table has segment rows"
    from fastcam.cli import main
    root,df,bx,learn = squares
    files = [root/f for f in bx.file]
    learn.use_recipe(dict(layer='blocks', mode='segment', threshold=0.3))
    try:
        res = learn.cam(files, target='pos')
        assert res.input_image is not None and (_ious(res.boxes(min_prob=0.), bx) >= 0.5).all()
        for f,t in zip(files, bx.itertuples()):
            lb = get_boxes(f, learn.dls, learn, target='pos', show_img=False, min_prob=0.)
            assert box_iou(torch.tensor(lb.df[['x0', 'y0', 'x1', 'y1']].to_numpy(np.int64)[:1]), torch.tensor([[t.x0, t.y0, t.x1, t.y1]])).item() >= 0.5
        pos = df[df.label=='pos'].reset_index(drop=True)
        _,boxes = learn.get_cams(learn.dls.test_dl(pos, with_labels=False), target='pos', with_boxes=True, min_prob=0.)
        assert (_ious(boxes.assign(file=[str(pos.file[i]) for i in boxes['item']]), bx) >= 0.5).all()
        t = learn.tune_boxes([root/f for f in df.file], root/'boxes.csv', target='pos', methods=('gradcam',), layers=['blocks'], tta=(False,),
                             thresholds=(0.3,), grad_thresholds=(0.3,), progress=False)
        assert sorted(t['mode']) == ['gradient', 'segment', 'threshold'] and t.set_index('mode').loc['segment', 'box_acc'] == 1.0
    finally: learn.use_recipe(None)
    learn.export(tmp_path/'model.pkl')
    assert main(['run', str(tmp_path/'model.pkl'), *[str(root/f) for f in bx.file], '--trust', '--target', 'pos', '--layer', 'blocks',
                 '--min-prob', '0', '--out', str(tmp_path/'s'), '--no-progress', '--mode', 'segment', '--threshold', '0.3']) == 0
    assert (_ious(pd.read_csv(tmp_path/'s'/'boxes.csv'), bx) >= 0.5).all()
    opts = json.loads((tmp_path/'s'/'run.json').read_text())['options']
    assert (opts['mode'], opts['threshold'], opts['grad_threshold']) == ('segment', 0.3, 0.2)
    html = (tmp_path/'s'/'report.html').read_text()
    assert "<td>gradient threshold (refused segments)</td><td>0.2</td>" in html   # the Run table says what the gradient threshold does in a segment run

def test_a_segment_spilling_past_its_region_keeps_the_gradient_box():
    "Known answer, no model: a bright 24x24 rectangle is one segment; a map region inside it is bounded by the map, so the box is where the saliency is (the gradient box), not the rectangle; a region around the rectangle gets the rectangle"
    from fastcam.refine import input_segments, segment_boxes
    im = torch.zeros(64, 64); im[10:34, 20:44] = 1.                 # the segment: x 20-43, y 10-33 (14 % of the image: not background)
    sg = input_segments(im)
    sal = np.zeros((64, 64)); sal[18:24, 28:34] = 1.                # the input saliency: a 6x6 patch inside it
    inner = torch.zeros(64, 64); inner[14:28, 24:38] = 1.           # a map region inside the rectangle (14x14): its segment's box is larger than its own
    assert segment_boxes(inner, sal, sg, 0.5, 0.2).tolist() == [[28, 18, 34, 24]]      # the saliency patch's box
    outer = torch.zeros(64, 64); outer[6:38, 16:48] = 1.            # a region around the rectangle
    ob = segment_boxes(outer, sal, sg, 0.5, 0.2)
    assert len(ob) == 1 and box_iou(torch.tensor(ob), torch.tensor([[20, 10, 44, 34]])).item() > 0.8, ob   # the rectangle's box (on a flat image its 1-px rim may be a segment of its own)

def test_segments_are_ranked_by_saliency_times_the_map():
    "Known answer, no model: one map region over two rectangles; the input saliency is higher on the small one, at the region's rim, the map peaks on the large one. The box is the large rectangle (mean of saliency x map 0.5 x 1.0 beats 0.9 x 0.5); ranked by the saliency alone it would be the small one"
    from fastcam.refine import input_segments, segment_boxes, segment_region, segment_evidence
    from fastcam.boxes import threshold_regions
    im = torch.zeros(64, 64); im[8:16, 8:18] = 0.9; im[30:50, 28:52] = 0.5          # A: 8x10 at the rim, B: 20x24 in the middle
    mp = torch.zeros(64, 64); mp[4:60, 4:60] = 0.5; mp[26:54, 24:56] = 1.            # one region at 0.4 over both; the map's peak over B
    sal = np.zeros((64, 64)); sal[8:16, 8:18] = 0.9; sal[30:50, 28:52] = 0.5        # the saliency higher on A
    sg = input_segments(im)
    a,b = sg[12, 12],sg[40, 40]
    assert a != b and (sg==b).sum() <= 480                                          # two segments (each rectangle's blurred rim may be one of its own)
    ev = segment_evidence(np.array([a, b]), sal, sg, mp.numpy())
    np.testing.assert_allclose(ev, [(sal*mp.numpy())[sg==j].mean() for j in (a, b)])  # the mean of saliency x map over each segment
    assert ev[1] > ev[0]
    bx = segment_boxes(mp, sal, sg, 0.4, 0.2)
    assert len(bx) == 1 and box_iou(torch.tensor(bx).float(), torch.tensor([[28., 30, 52, 50]])).item() > 0.6, bx   # B (its blurred rim joined), not A
    reg = threshold_regions(mp, 0.4)[0][0]
    alone = segment_region(reg, sal, sg, 0.2)                                        # no map: the saliency alone picks A
    assert box_iou(torch.tensor([alone]).float(), torch.tensor([[8., 8, 18, 16]])).item() > 0.6, alone
    nan = mp.clone(); nan[:, :2] = float('nan')                                      # unseen pixels (NaN) count as no evidence, not as NaN
    assert np.isfinite(segment_evidence(np.array([a, b]), sal, sg, nan.numpy())).all()
