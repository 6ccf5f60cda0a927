"`fastcam run --stability` and `--sanity N` (issue 19): per-file flip/shift agreement in the records, boxes.csv and the report, checked against a hand computation on a hand-made model whose map is known; the sanity check's table and report section."
from html.parser import HTMLParser
import json
import numpy as np, pandas as pd, pytest, torch
from torch import nn
from PIL import Image
from fastcore.script import CliError
from fastai.vision.all import DataBlock, ImageBlock, CategoryBlock, get_image_files, parent_label, RandomSplitter, Learner
from fastcam import cli

S = 4   # the shift `fastcam run --stability` uses (fastcam.sanity.batch_stability's default)

class Bump(nn.Module):
    "Adds `bias` times a fixed bump in the top-left corner of its input: a map that stays where it is when the image moves"
    def __init__(self, bias): super().__init__(); self.bias = bias
    def forward(self, x): return x + self.bias*_bump(x.shape[-2:]).to(x)

def _bump(hw):
    g = torch.zeros(*hw); g[2:14, 2:14] = 1.
    return g

def _bright(bias):
    "Class 1's logit is the image's mean brightness: Grad-CAM at block 0 (1x1 convs, full resolution) is the image's gray level (+ `bias` x the bump)"
    m = nn.Sequential(nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), Bump(bias)), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        m[0][0].weight.fill_(1/3); m[0][0].bias.zero_(); m[3].weight.zero_(); m[3].weight[1].fill_(1/4); m[3].bias.zero_()
    return m

@pytest.fixture(scope='module')
def files(tmp_path_factory):
    "Six 64x64 RGB PNGs (a bright blob on a dim textured background, at different places), in class folders; exported learners of the two models"
    root = tmp_path_factory.mktemp('trust')
    rng = np.random.default_rng(0)
    for i in range(6):
        a = rng.uniform(0, 50, (64, 64, 3))
        y, x = rng.integers(8, 40, 2); a[y:y+16, x:x+20] += 180
        d = root/'in'/('a' if i % 2 else 'b'); d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a.astype(np.uint8)).save(d/f'img{i}.png')
    dls = DataBlock(blocks=(ImageBlock, CategoryBlock), get_items=get_image_files, get_y=parent_label,
                    splitter=RandomSplitter(seed=0)).dataloaders(root/'in', bs=2, num_workers=0)
    for name, bias in (('plain', 0.), ('bump', 3.)): Learner(dls, _bright(bias)).export(root/f'{name}.pkl')
    return root, sorted((root/'in').rglob('*.png'))

def _mm(m): return (m - m.min())/(m.max() - m.min())

def _pearson(a, b): return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])

def _expected(f, bias):
    "By hand: the map is the min-max normalised gray level (+ bias x bump); the mirror image's map mirrored back, the shifted copy's map shifted back"
    gray = np.asarray(Image.open(f).convert('RGB'), np.float64).mean(-1)/255
    g = _bump(gray.shape).numpy().astype(np.float64)*bias
    shifted = np.pad(gray, ((S, 0), (S, 0)), mode='edge')[:64, :64]     # the image moved S pixels right and down, edges repeated
    own, flip, moved = _mm(gray + g), _mm(gray[:, ::-1] + g)[:, ::-1], _mm(shifted + g)
    return _pearson(own[S:, S:-S], flip[S:, S:-S]), _pearson(own[:-S, :-S], moved[S:, S:])

def _records(out): return {r['file']: r for r in map(json.loads, (p.read_text() for p in (out/'records').glob('*.json')))}

@pytest.mark.parametrize('name, bias', [('plain', 0.), ('bump', 3.)])
def test_stability_flags_equal_a_hand_computation(files, name, bias):
    root, fs = files
    out = root/f'out_{name}'
    assert cli.run(str(root/f'{name}.pkl'), str(root/'in'), out=str(out), trust=True, layer='0', bs=4, stability=True, progress=False) == 0
    recs, boxes = _records(out), pd.read_csv(out/'boxes.csv')
    assert len(recs) == 6 and {'flip_corr', 'shift_corr', 'unstable'} <= set(boxes.columns)
    for f in fs:
        r, (fc, sc) = recs[str(f)], _expected(f, bias)
        np.testing.assert_allclose([r['flip_corr'], r['shift_corr']], [fc, sc], atol=1e-4)
        assert r['unstable'] == (fc < 0.5 or sc < 0.5)
        rows = boxes[boxes.file == str(f)]
        np.testing.assert_allclose(rows.flip_corr, r['flip_corr']); assert (rows.unstable == r['unstable']).all()
    flags = [r['unstable'] for r in recs.values()]
    if bias: assert all(flags) and max(r['flip_corr'] for r in recs.values()) < 0.5   # the bump stays put: the map doesn't follow the image
    else: assert not any(flags) and min(r['flip_corr'] for r in recs.values()) > 0.99
    html = (out/'report.html').read_text()
    assert html.count('unstable map: flip') == sum(flags) and "value='unstable'" in html
    with pytest.raises(CliError, match='other options'):   # a resume without --stability would mix records of other options
        cli.run(str(root/f'{name}.pkl'), str(root/'in'), out=str(out), trust=True, layer='0', bs=4, progress=False)

class _Tables(HTMLParser):
    "The text of each <h2> and the cells of the table that follows it"
    def __init__(self): super().__init__(); self.sections, self.h2, self.cell = {}, None, None
    def handle_starttag(self, tag, attrs):
        if tag == 'h2': self.h2 = dict(attrs).get('id'); self.sections[self.h2] = []
        if tag in ('td', 'th') and self.h2: self.cell = ''
    def handle_data(self, d):
        if self.cell is not None: self.cell += d
    def handle_endtag(self, tag):
        if tag in ('td', 'th') and self.cell is not None: self.sections[self.h2].append(self.cell.strip()); self.cell = None

def test_sanity_writes_its_table_and_report_section(files, capsys):
    root, fs = files
    out = root/'out_sanity'
    assert cli.run(str(root/'plain.pkl'), str(root/'in'), out=str(out), trust=True, layer='0', sanity=4, progress=False) == 0
    sc = pd.read_csv(out/'sanity.csv', dtype={'layer': str, 'step': str})
    assert set(sc.method) == {'gradcam'} and set(sc.layer) == {'0'} and {'spearman', 'ssim', 'hog', 'step'} <= set(sc.columns)
    # randomizing the 1x1 conv (step 2, input side last) gives random channel mixes of the image: compare with the table's own median rule
    med = sc[sc.step != 'labels'].spearman.median()
    p = _Tables(); p.feed((out/'report.html').read_text())
    cells = p.sections['sanity']
    head = ['method', 'layer', 'files', 'median Spearman', 'median SSIM', 'median HOG', 'result']
    assert cells[:7] == head and cells[7:10] == ['gradcam', '0', '4']
    assert float(cells[10]) == pytest.approx(med, abs=1e-3) and cells[13] == ('passed' if med < 0.5 else 'FAILED')
    assert 'sanity check of gradcam at 0 on 4 files' in capsys.readouterr().out
    assert cli.run(str(root/'plain.pkl'), str(root/'in'), out=str(out), trust=True, layer='0', progress=False) == 0   # not a run option: resumes
    assert not (out/'sanity.csv').exists() and "id='sanity'" not in (out/'report.html').read_text()

@pytest.mark.parametrize('name, bias', [('plain', 0.), ('bump', 3.)])
def test_cam_stability_equals_a_hand_computation(files, name, bias):
    "The Python API's `stability=True` (learn.cam, get_cams, get_boxes) keeps the hand computation's numbers on the CamResult, its indexing, its boxes table and its titles"
    import matplotlib; matplotlib.use('Agg')
    from fastai.learner import load_learner
    from fastcam.show import get_boxes
    import fastcam.callback   # Learner.get_cams
    root, fs = files
    learn = load_learner(root/f'{name}.pkl')
    exp = np.array([_expected(f, bias) for f in fs])                     # [6, 2]: flip, shift by hand
    unstable = (exp < 0.5).any(1)
    res = learn.cam(fs, layer='0', bs=4, stability=True)                 # two batches: their tables are joined
    st = res.stability
    assert list(st.columns) == ['flip_corr', 'shift_corr', 'unstable'] and len(st) == 6
    np.testing.assert_allclose(st[['flip_corr', 'shift_corr']].to_numpy(), exp, atol=1e-4)
    assert (st.unstable.to_numpy() == unstable).all() and unstable.all() == bool(bias)
    # measured on each item's own map: a tta average (mirror-symmetric by construction) does not change it
    np.testing.assert_allclose(learn.cam(fs, layer='0', tta=True, stability=True).stability.flip_corr, exp[:, 0], atol=1e-4)
    # indexing, .to and repr keep each item's row
    np.testing.assert_allclose(res[[4, 1]].stability.flip_corr, exp[[4, 1], 0], atol=1e-4)
    np.testing.assert_allclose(res[2:5].stability.shift_corr, exp[2:5, 1], atol=1e-4)
    assert res[5].stability.unstable.tolist() == [unstable[5]] and res.to('cpu').stability is st
    assert f'unstable maps: {unstable.sum()} of 6' in repr(res) and 'unstable' not in repr(learn.cam(fs, layer='0'))
    assert learn.cam(fs, layer='0').stability is None and 'unstable' not in learn.cam(fs, layer='0').boxes(min_prob=0).columns
    # the boxes table: the item's numbers at the end of each of its rows
    df = res.boxes(min_prob=0)
    assert list(df.columns[-3:]) == ['flip_corr', 'shift_corr', 'unstable'] and set(df['item']) == set(range(6))
    np.testing.assert_allclose(df.flip_corr, exp[df['item'], 0], atol=1e-4); assert (df.unstable == unstable[df['item']]).all()
    # res.show() says which maps are unstable, on a second title line
    axs = res.show()
    assert [a.get_title().endswith('\nunstable map') for a in axs[:6]] == unstable.tolist()
    # the callback path (get_preds with GradCAMCallback) and get_boxes give the same numbers; grad mode is back on
    g = learn.get_cams(dl=learn.dls.test_dl(fs), layer='0', stability=True)
    np.testing.assert_allclose(g.stability[['flip_corr', 'shift_corr']].to_numpy(), exp, atol=1e-4)
    assert torch.is_grad_enabled()
    lb = get_boxes(fs[3], learn.dls, learn, layer='0', stability=True, show_img=False, min_prob=0)
    np.testing.assert_allclose(lb.df[['flip_corr', 'shift_corr']].to_numpy()[0], exp[3], atol=1e-4)

def test_stability_refuses_a_shift_that_does_not_fit():
    from fastcam.sanity import batch_stability
    with pytest.raises(ValueError, match=r"shift=8 pixels doesn't fit a \(16, 16\) input"):
        batch_stability(_bright(0.), torch.rand(2, 3, 16, 16), [[1], [1]], layer=[0], shift=8)

def test_report_says_when_a_check_had_only_empty_maps():
    "A method whose trained maps were all empty (SanityCheck.summary: items 0, spearman NaN) fails, and the report says why"
    from fastcam.report import _sanity_section
    nan = float('nan')
    p = _Tables(); p.feed(_sanity_section([dict(method='gradcam', layer='0', files=2, spearman=nan, ssim=nan, hog=nan, items=0, passed=False),
                                           dict(method='gradcam', layer='1', files=2, spearman=0.7, ssim=0.5, hog=0.4, items=2, passed=False)]))
    cells = p.sections['sanity']
    assert cells[13] == 'FAILED: empty maps' and cells[20] == 'FAILED'

def test_label_randomized_copy_of_a_vit_is_fresh_and_fully_trainable():
    "randomize_ fills parameters that need grads (a timm ViT's cls_token, pos_embed) under no_grad (an in-place op on them raised); the copy train_fn gets is trainable everywhere, even where the user's model is frozen, and the user's model keeps its weights and its frozen layers"
    timm = pytest.importorskip('timm')
    from fastcam.sanity import randomize_, label_randomized
    m = timm.create_model('vit_tiny_patch16_224', pretrained=False, num_classes=2, img_size=32, patch_size=8)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m.blocks.requires_grad_(False)                       # a frozen body, as fastai leaves it before unfreeze()
    seen = {}
    def fit(x):
        seen['trainable'] = all(p.requires_grad for p in x.parameters())
        seen['fresh'] = not torch.equal(x.cls_token, m.cls_token) and not torch.equal(x.pos_embed, m.pos_embed)
        opt = torch.optim.SGD(x.parameters(), 0.1); x(torch.randn(2, 3, 32, 32)).sum().backward(); opt.step()
        return x
    r = label_randomized(fit, m)
    assert seen == {'trainable': True, 'fresh': True} and r is not m and torch.is_grad_enabled()
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())
    assert not any(p.requires_grad for p in m.blocks.parameters())
