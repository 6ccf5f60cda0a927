"""`get_cmaps` and `get_boxes` end to end: a small model trained here, from scratch, on synthetic chest-X-ray DICOMs
finds the lesions of held-out positives (weak localisation); the figures carry the boxes' colors; and every file of
pydicom's test data either gets maps or a one-line `ItemError`."""
import os
os.environ.setdefault('MPLBACKEND', 'Agg')
import random, time
from pathlib import Path
import numpy as np, pandas as pd, pytest, torch
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import pydicom
from PIL import Image
from fastai.torch_core import set_seed
from fastcam.synth import make_dicom_set
from fastcam.items import ItemError
from fastcam.core import CamResult
from fastcam.boxes import show_boxes
from fastcam.show import get_cmaps, get_boxes
from fastcam.cli import gap_linear_learner, synth_dls
from fastcam.metrics import best_threshold

# The recipe, which `fastcam demo` also uses (the rates it reaches are under `--- weak localisation ---`); ~50 s in all on
# one core of a quiet machine:
N, SEED = 600, 0              # make_dicom_set's defaults otherwise: lesions 18-64 px, soft, faint; 480 train, 120 valid (60 positive)
SIZE, BS, EPOCHS, LR = 96, 8, 6, 5e-3
LAYERS = [[0,-4], [0,-3], [0,-2], [0,-1]]   # the body's four blocks (48x48, 24x24, 12x12 and 6x6 maps), fused: mean of their normalised maps

@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    "`(learn, dls, path, labels, boxes, seconds)`: the small model trained on the synthetic set, on one thread (the same model whatever the core count, and no oversubscription on a busy machine)"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t0 = time.time()
        path = tmp_path_factory.mktemp('xrays')
        make_dicom_set(path, n=N, seed=SEED)
        lb, bx = pd.read_csv(path/'labels.csv'), pd.read_csv(path/'boxes.csv')
        set_seed(SEED, reproducible=True)
        dls = synth_dls(path, lb, SIZE, bs=BS, seed=SEED)   # the demo's DataLoaders: squish to SIZE, Flip in training
        learn = gap_linear_learner(dls, size=SIZE)         # the demo's model (fastcam.cli): small XResNet body, GAP + linear head
        with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(EPOCHS, LR)
        yield learn, dls, path, lb, bx, time.time() - t0
    finally: torch.set_num_threads(threads)

def _iou(a, b):
    "IoU of two half-open boxes (x0, y0, x1, y1), written here, independent of fastcam.metrics"
    iw, ih = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    inter = max(iw, 0) * max(ih, 0)
    union = (a[2]-a[0])*(a[3]-a[1]) + (b[2]-b[0])*(b[3]-b[1]) - inter
    return inter/union if union > 0 else 0.

def _inside(a, b):
    "Does the centre of box `a` lie in half-open box `b`?"
    cx, cy = (a[0]+a[2])/2, (a[1]+a[3])/2
    return b[0] <= cx < b[2] and b[1] <= cy < b[3]

def _best(df, i):
    "The first (best) box of item `i` in a boxes table, or None"
    rows = df[(df['item'] == i) & df['x0'].notna()]             # a row without a box (a `reason`) is no box
    return None if rows.empty else tuple(int(v) for v in rows.iloc[0][['x0', 'y0', 'x1', 'y1']])

# --- weak localisation ---

# What the recipe reaches, over model seeds 0-4 (set_seed and the DataLoader rng; data seed 0), 60 held-out positives,
# measured on 2 CPU cores with this file's code: the fused map of the body's four blocks with tta=True, the peak's cell
# and the first threshold box, against each lesion's box; the threshold chosen on 80 training positives.
#   model seed                         0      1      2      3      4
#   valid accuracy                     0.983  0.992  0.983  0.992  0.975
#   peak inside the lesion box         0.967  0.883  0.917  1.000  0.917
#   box IoU>=0.5 @0.6                  0.550  0.450  0.550  0.700  0.583
#                @0.7 (the default)    0.717  0.817  0.150  0.883  0.667
#                @0.8                  0.367  0.633  0.067  0.350  0.233
#   chosen threshold                   0.70   0.70   0.60   0.70   0.65
#   box IoU>=0.5 at it                 0.717  0.817  0.550  0.883  0.733
# The same models without tta (seeds 1-4): peak 0.87-0.97, box at the chosen threshold 0.45-0.62. The recipe before (no Flip in
# training, the last three blocks, threshold 0.7): peak 0.67-0.98, box 0.23-0.40 (best threshold of 0.6-0.8: 0.22-0.62).
# What changed it: Flip makes the model know a lesion by its look in either lung; the 48x48 block gives the fused map
# finer edges; tta averages out what the model sees on one side only; and the chosen threshold follows the model (its
# maps' blobs are wider or narrower than the lesions from seed to seed: seed 2's best is 0.55-0.6, the others' 0.65-0.75).
# The seed here (0) reaches the bars; over the five seeds each bar is reached by four, both by three (0, 3, 4).
# The targets are the bars asserted: peak inside the lesion box on >= 90% and a box with IoU >= 0.5 on >= 70%,
# at the threshold chosen on N_CALIB training positives (best_threshold), as a user with a few labelled images would.
ACC_BAR, POINT_BAR, BOX_BAR = 0.9, 0.9, 0.7
N_CALIB = 80

def _positives(trained, valid=True, n=None):
    "Files and ground-truth boxes of the validation positives (never trained on), or of the first `n` training positives"
    learn, dls, path, lb, bx, _ = trained
    pos = lb[lb.is_valid == valid].merge(bx, on=['file', 'label']).head(n)
    assert set(pos.label) == {'nodule'}
    return [path/f for f in pos.file], pos[['x0', 'y0', 'x1', 'y1']].to_numpy()

def _held_out_positives(trained):
    files, gt = _positives(trained)
    assert len(files) == 60
    return files, gt

def _box_rate(res, gt, threshold):
    "Share of items whose first threshold box has IoU >= 0.5 with its lesion"
    thr = res.boxes(mode='threshold', threshold=threshold, min_area=16, topk=1, min_prob=0.)   # the maps' boxes, ungated
    return np.mean([(b := _best(thr, i)) is not None and _iou(b, g) >= 0.5 for i, g in enumerate(gt)])

def test_trained_model_finds_the_lesions(trained):
    learn, dls, path, lb, bx, secs = trained
    with learn.no_bar(): acc = float(learn.validate()[1])
    files, gt = _held_out_positives(trained)
    res = learn.cam(files, layer=LAYERS, target='nodule', fused=True, tta=True)
    assert res.maps.shape[-2:] == (48, 48)                            # upsampled to the finest of the four
    peak = res.boxes(mode='peak', min_prob=0.)
    point = np.mean([(b := _best(peak, i)) is not None and _inside(b, g) for i, g in enumerate(gt)])
    box = {t: _box_rate(res, gt, t) for t in (0.6, 0.65, 0.7, 0.75, 0.8)}
    cf, cg = _positives(trained, valid=False, n=N_CALIB)
    thr = best_threshold(learn.cam(cf, layer=LAYERS, target='nodule', fused=True, tta=True), [[g] for g in cg])
    chosen = _box_rate(res, gt, thr)
    print(f"\nvalid accuracy {acc:.3f}; {len(gt)} held-out positives, fused Grad-CAM of {LAYERS} with tta: peak inside the lesion {point:.3f}, "
          f"threshold box IoU>=0.5 " + ', '.join(f'{t}: {v:.3f}' for t, v in box.items()) +
          f"; at the threshold chosen on {len(cf)} training positives ({thr}): {chosen:.3f}; trained in {secs:.0f} s")
    assert acc >= ACC_BAR
    assert point >= POINT_BAR
    assert chosen >= BOX_BAR

# --- figures ---

def _saved_rgb(fn):
    "Save the current figure to `fn` (PNG) and return its pixels as an RGB array"
    plt.gcf().savefig(fn, dpi=80)
    plt.close('all')
    return np.asarray(Image.open(fn).convert('RGB')).astype(int)

def _count(a, color):
    "Pixels of `a` close to pure red or pure blue"
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    if color == 'red': return int(((r > 200) & (g < 60) & (b < 60)).sum())
    if color == 'blue': return int(((b > 200) & (r < 60) & (g < 60)).sum())
    raise ValueError(color)

def _positive_file(trained, k=0):
    learn, dls, path, lb, bx, _ = trained
    return path/bx.file.iloc[k]

def test_get_cmaps_draws_to_png(trained, tmp_path):
    learn, dls, *_ = trained
    plt.close('all')
    res = get_cmaps(_positive_file(trained), dls, learn, show_maps=True, show_cmap=True)
    assert isinstance(res, CamResult) and res.targets.shape == (1, 2)   # 'all' classes by default
    assert len(plt.get_fignums()) == 2                                  # the maps, and the overlay at original size
    a = _saved_rgb(tmp_path/'cmap.png')
    assert a.shape[0] > 100 and a.shape[1] > 100 and a.std() > 10      # a picture, not a blank canvas

def test_get_boxes_draws_the_box_color(trained, tmp_path):
    learn, dls, *_ = trained
    f = _positive_file(trained)
    plt.close('all')
    get_boxes(f, dls, learn, target='nodule', show_img=False)
    assert not plt.get_fignums()                                        # nothing drawn without show_img
    lb = get_boxes(f, dls, learn, target='nodule', color='red')
    assert len(lb.df) == 1 and list(lb.lbl) == [lb.df.label.iloc[0]]
    red = _count(_saved_rgb(tmp_path/'red.png'), 'red')
    lb = get_boxes(f, dls, learn, target='nodule', color='blue')
    a = _saved_rgb(tmp_path/'blue.png')
    assert red > 50 and _count(a, 'blue') > 50 and _count(a, 'red') == 0   # the image itself (bone) has neither

def test_get_boxes_colors_per_label(trained, tmp_path):
    learn, dls, path, lb, bx, _ = trained
    colors = {'normal': 'blue', 'nodule': 'red'}
    # every target, one box each: the two classes' boxes in their colors (a class whose map is 0 everywhere has no box)
    for f in [path/o for o in bx.file[:6]]:
        plt.close('all')
        got = get_boxes(f, dls, learn, target='all', color=colors, topk=1, min_prob=0.)   # no gate: the doubted class too
        boxed = set(got.df.label[got.df.x0.notna()])
        if boxed == {'normal', 'nodule'}: break
    a = _saved_rgb(tmp_path/'both.png')
    for l in boxed: assert _count(a, colors[l]) > 50, l
    # and with a table of two labels, whatever the model says
    df = pd.DataFrame(dict(x0=[10, 60], y0=[10, 60], x1=[50, 110], y1=[40, 100], label=['normal', 'nodule'], score=[0.9, 0.8]))
    plt.close('all')
    show_boxes(np.full((120, 130), 128, np.uint8), df, color=colors, cmap='bone')
    a = _saved_rgb(tmp_path/'table.png')
    assert _count(a, 'red') > 50 and _count(a, 'blue') > 50

# --- pydicom's test files through get_cmaps ---

def test_pydicom_test_files_get_maps_or_a_one_line_item_error(trained):
    learn, dls, *_ = trained
    files = pydicom.data.get_testdata_files()
    assert len(files) > 100
    ok, errors, bare = 0, 0, []
    for f in files:
        try: res = get_cmaps(f, dls, learn, show_maps=False, show_cmap=False)
        except ItemError as e:
            msg = str(e)
            assert '\n' not in msg and Path(f).name in msg, msg
            errors += 1
            continue
        except Exception as e:
            bare.append(f'{Path(f).name}: {type(e).__name__}: {e}')
            continue
        assert isinstance(res, CamResult) and res.maps.shape[:2] == (1, 2) and torch.isfinite(res.maps).all()
        ok += 1
    plt.close('all')
    assert not bare, bare
    print(f'\npydicom test files: {ok} explained, {errors} clean ItemErrors')
    assert ok >= 60 and errors >= 60

# --- trust checks (issue 19) ---

def test_sanity_check_passes_gradcam_and_fails_guided_backprop(trained):
    """Adebayo et al.'s cascading randomization on the model that finds the lesions (test above): Grad-CAM's maps change
    when the model's weights are randomized (it passes); Guided Backprop's stay similar while the upper blocks are random
    (it fails, as the paper found). The learner's weights, mode and grad state are untouched."""
    from fastcam.sanity import sanity_check, map_similarity
    learn, dls, path, lb, bx, _ = trained
    files, _ = _held_out_positives(trained)
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    training, grad = learn.model.training, torch.is_grad_enabled()
    sc = sanity_check(learn, files[:8], methods=('gradcam', 'guided_backprop'), layers=([0, -1],), progress=False)
    s = sc.summary()
    print('\n', sc.round(3).to_string(), '\n', s.round(3).to_string())
    assert s.loc[('gradcam', '0.7'), 'passed'] and not s.loc[('guided_backprop', '0.7'), 'passed']
    assert s.loc[('guided_backprop', '0.7'), 'spearman'] > s.loc[('gradcam', '0.7'), 'spearman'] + 0.3
    assert all(torch.equal(before[k], v) for k, v in learn.model.state_dict().items())
    assert learn.model.training == training and torch.is_grad_enabled() == grad

def test_stability_of_the_trained_model(trained):
    "Most held-out positives' maps follow a flip and a 4 px shift (correlation >= 0.5); the flag marks exactly the others"
    from fastcam.sanity import stability
    learn, *_ = trained
    files, _ = _held_out_positives(trained)
    st = stability(learn, files[:16], layer=[0, -2], target='nodule')
    print('\n', st.describe().round(3).to_string())
    assert (st.unstable == ((st.flip_corr < 0.5) | (st.shift_corr < 0.5))).all()
    assert (~st.unstable).mean() >= 0.75

def test_sanity_check_fails_maps_that_ignore_the_randomized_blocks(trained):
    """The check must also FAIL when a map does not depend on the weights being randomized. Known answer: EigenCAM (the
    activations' first principal component, no gradient) at the stem's last conv '0.2' is a function of the blocks below
    that layer only, so the cascade's first five steps (head, then the four stages) leave its maps bit-identical: Spearman,
    SSIM and HOG exactly 1; the median over the 8 steps is 1 and it fails. Grad-CAM at the same layer weights the same
    activations by gradients from the randomized blocks above: its maps change and it passes."""
    from fastcam.sanity import sanity_check, model_blocks
    learn, *_ = trained
    files, _ = _held_out_positives(trained)
    assert model_blocks(learn.model) == ['0.0', '0.1', '0.2', '0.4', '0.5', '0.6', '0.7', '1.2']
    sc = sanity_check(learn, files[:8], methods=('eigencam', 'gradcam'), layers=([0, 2],), progress=False)
    s = sc.summary()
    print('\n', sc.round(3).to_string(), '\n', s.round(3).to_string())
    eig = sc[sc.method == 'eigencam'].set_index('step')
    np.testing.assert_allclose(eig.loc[['1', '2', '3', '4', '5'], ['spearman', 'ssim', 'hog']].to_numpy(), 1., atol=1e-6)
    assert eig.loc['6', 'spearman'] < 0.99                       # randomizing '0.2' itself changes them
    assert not s.loc[('eigencam', '0.2'), 'passed'] and s.loc[('eigencam', '0.2'), 'spearman'] == pytest.approx(1.)
    assert s.loc[('gradcam', '0.2'), 'passed']

def test_data_randomization_with_a_train_fn(trained):
    """Adebayo et al.'s data randomization test through `train_fn`: it gets a re-initialised copy (never the user's model),
    fits it here on the training set with its labels permuted, and the table gets a 'labels' row per method x layer. Known
    answers: a train_fn returning the trained weights gives maps identical to the trained ones (Spearman 1, fails); one
    returning nothing useful is refused in one line. The user's model is bit-identical afterwards."""
    from fastai.learner import Learner
    from fastcam.sanity import sanity_check
    learn, dls, path, lb, bx, _ = trained
    files, _ = _held_out_positives(trained)
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    training, grad = learn.model.training, torch.is_grad_enabled()
    got = []
    def fit_on_permuted_labels(model):
        got.append((model, [p.detach().clone() for p in model.parameters()]))
        df = lb.copy()
        train = ~df.is_valid.astype(bool)
        df.loc[train, 'label'] = np.random.default_rng(1).permutation(df.loc[train, 'label'].to_numpy())
        l2 = Learner(synth_dls(path, df, SIZE, bs=BS, seed=SEED), model)
        assert list(l2.dls.vocab) == list(learn.dls.vocab)          # the same classes, so the same class index is explained
        with l2.no_bar(), l2.no_logging(): l2.fit_one_cycle(2, LR)
        return l2
    kw = dict(methods=('gradcam',), layers=([0, -1],), progress=False)
    sc = sanity_check(learn, files[:8], train_fn=fit_on_permuted_labels, **kw)
    s = sc.summary()
    print('\n', sc.round(3).to_string(), '\n', s.round(3).to_string())
    (given, init), = got
    assert given is not learn.model and not any(torch.equal(p, before[k]) for (k, _), p in zip(learn.model.named_parameters(), init))
    lab = sc[sc.step == 'labels']
    assert len(lab) == 1 and lab.randomized.item() == 'trained on permuted labels' and np.isfinite(lab[['spearman', 'ssim', 'hog']].to_numpy()).all()
    assert {'labels_spearman', 'labels_passed'} <= set(s.columns) and s.labels_spearman.item() == pytest.approx(lab.spearman.item())
    assert s.labels_passed.item() == (lab.spearman.item() < 0.5)
    import copy
    same = sanity_check(learn, files[:8], train_fn=lambda m: copy.deepcopy(learn.model), blocks=['1.2'], **kw)   # the trained weights: identical maps
    assert same[same.step == 'labels'].spearman.item() == pytest.approx(1.) and not same.summary().labels_passed.item()
    for fn, msg in ((lambda m: None, 'train_fn returned None'), (lambda m: 0.9, 'train_fn returned float'),
                    (lambda m: m, 'returned the model it was given untrained'), (lambda m: learn, 'returned the model being checked')):
        with pytest.raises(ValueError, match=msg): sanity_check(learn, files[:2], train_fn=fn, blocks=['1.2'], **kw)
    assert all(torch.equal(before[k], v) for k, v in learn.model.state_dict().items())
    assert learn.model.training == training and torch.is_grad_enabled() == grad
