"""Pictures (issue 16): the overlay leaves the image as it is where the map is 0 and changes it where the map is hot; grayscale
images are drawn in matplotlib's `bone` by every drawing function; `res.show` of a crop-`Resize` learner maps through the
same geometry as `original_maps`, so the columns the model never saw stay the image (or are dimmed/hatched, never coloured)."""
import os
os.environ.setdefault('MPLBACKEND', 'Agg')
from pathlib import Path
import numpy as np, pandas as pd, pytest, torch
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
from PIL import Image
from fastai.vision.all import DataBlock, ImageBlock, CategoryBlock, ColReader, ColSplitter, Resize, vision_learner, PILImageBW
from fastcam.synth import make_png_set
from fastcam.cli import tiny_xresnet
from fastcam.show import show_cam, show_original_cam, save_figure
import fastcam.cli as cli

def bone(gray):
    "The pixels matplotlib draws for 8-bit grayscale `gray` with cmap='bone' (its own colormap, not fastcam's)"
    return (plt.get_cmap('bone')(np.asarray(gray, np.uint8))[..., :3]*255).round().astype(int)

def drawn(ax):
    "The RGB pixels drawn on `ax` (its one image)"
    (im,) = ax.images
    return np.asarray(im.get_array()).astype(int)

def test_a_map_zero_outside_a_square_leaves_the_image_there():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (48, 64)).astype(np.uint8)
    m = np.zeros((48, 64)); m[12:30, 20:44] = rng.uniform(0.2, 1, (18, 24))
    px = drawn(show_cam(img, m))
    out, sq = m == 0, m > 0
    assert np.abs(px[out] - bone(img)[out]).max() <= 2
    assert (np.abs(px[sq] - bone(img)[sq]).max(-1) > 2).all()
    # a coarse map stretched over the image: the cells that are 0 far from the hot one leave their pixels alone too
    c = torch.zeros(6, 8); c[2, 3] = 1.
    px = drawn(show_cam(img, c))
    assert np.abs(px[:, 48:] - bone(img)[:, 48:]).max() <= 2 and np.abs(px[16:24, 24:32] - bone(img)[16:24, 24:32]).max() > 20
    plt.close('all')

def test_grayscale_is_drawn_with_bone_everywhere(tmp_path):
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, (40, 50)).astype(np.uint8)
    zero = np.zeros((40, 50))
    for img in (gray, torch.tensor(gray)[None].float()/255, Image.fromarray(gray), Image.fromarray(gray).convert('RGB'), np.stack([gray]*3, -1)):
        assert np.abs(drawn(show_cam(img, zero)) - bone(gray)).max() <= 1, type(img)
        a0, a1 = show_cam(img, zero, merge=False)
        assert np.abs(drawn(a0) - bone(gray)).max() <= 1 and np.abs(drawn(a1) - bone(gray)).max() <= 1
        plt.close('all')
    # show_boxes (get_boxes' drawing) too, without being asked
    from fastcam.boxes import show_boxes
    assert np.abs(drawn(show_boxes(gray, [[5, 5, 20, 20]])) - bone(gray)).max() <= 1
    plt.close('all')
    # a colour image is drawn as it is
    rgb = rng.integers(0, 256, (40, 50, 3)).astype(np.uint8)
    assert (drawn(show_cam(rgb, zero)) == rgb).all()
    plt.close('all')
    # the CLI's overlay writer: a 520 px image is drawn at its size (no scaling) below the title strip, in bone
    big = rng.integers(0, 256, (520, 512)).astype(np.uint8)
    p = cli._overlay(big, torch.zeros(520, 512), 'normal 0.90', [], tmp_path, tmp_path/'a.dcm', ['normal', 'nodule'])
    page = np.asarray(Image.open(p).convert('RGB')).astype(int)
    top = page.shape[0] - 520
    assert top > 0 and np.abs(page[top:, :512] - bone(big)).max() <= 1
    orig = np.asarray(Image.open(tmp_path/'originals'/p.name).convert('RGB')).astype(int)
    assert orig.shape == page.shape and np.abs(orig[top:, :512] - bone(big)).max() <= 1

@pytest.fixture(scope='module')
def crop_learner(tmp_path_factory):
    "An (untrained) learner whose validation transform crops 60x90-ish images to a 48 px square: ~15 rows or columns a side unseen"
    path = tmp_path_factory.mktemp('crop')
    df = make_png_set(path, n=8, seed=0, size=(60, 90))
    dblock = DataBlock(blocks=(ImageBlock(PILImageBW), CategoryBlock), get_x=ColReader('file', pref=path), get_y=ColReader('label'),
                       splitter=ColSplitter('is_valid'), item_tfms=Resize(48, method='crop'))
    torch.manual_seed(0)
    learn = vision_learner(dblock.dataloaders(df, bs=4, num_workers=0), tiny_xresnet, pretrained=False, n_in=1)
    return learn, [path/f for f in df.file[:4]]

def _crop_columns(W, H):
    "Columns fastai's validation crop keeps of a W x H (W > H) image, computed here: the centred H-wide window (`Resize.encodes`, pcts 0.5)"
    x0 = int(0.5*(W - H))
    return x0, x0 + H

def test_res_show_of_a_crop_resize_learner_leaves_unseen_strips_as_the_image(crop_learner, tmp_path):
    learn, files = crop_learner
    res = learn.cam(files, method='eigencam')     # eigencam: a map that is not all zero on an untrained model
    imgs = [np.asarray(Image.open(f).convert('L')) for f in files]
    changed = 0
    for unseen in (None, 'dim', 'hatch'):
        axs = res.show(imgs, unseen=unseen)
        for ax, img in zip(axs, imgs):
            px, ref = drawn(ax), bone(img)
            if img.shape[0] > img.shape[1]: px, ref, img = px.swapaxes(0, 1), ref.swapaxes(0, 1), img.T   # portrait: the rows are cut off
            H, W = img.shape
            x0, x1 = _crop_columns(W, H)
            assert x0 >= 5
            out = np.r_[0:x0-1, x1+1:W]       # the columns the model never saw (one spare at each edge of the window)
            if unseen is None: assert np.abs(px[:, out] - ref[:, out]).max() <= 2
            if unseen == 'dim': assert np.abs(px[:, out] - ref[:, out]*0.5).max() <= 2
            if unseen == 'hatch':          # dimmed, or lighter lines: grey-blue of bone either way, never the map's colours
                d = px[:, out] - ref[:, out]*0.5
                assert (np.abs(d).max(-1) <= 2).mean() > 0.6 and (px[:, out][..., 2] >= px[:, out][..., 0]).all()
            changed += np.abs(px[:, x0+1:x1-1] - ref[:, x0+1:x1-1]).max() > 20
        plt.close('all')
    assert changed >= 3
    # without images, res.show opens the items itself, at their original size
    axs = res.show(unseen=None)
    assert drawn(axs[0]).shape[:2] == imgs[0].shape
    plt.close('all')

def test_show_original_cam_saves_a_paper_figure(crop_learner, tmp_path):
    learn, files = crop_learner
    res = learn.cam(files[:1], method='eigencam')
    ax = show_original_cam(res, 0, colorbar=True)
    assert len(ax.figure.axes) == 2 and ax.figure.get_size_inches()[0] == 7.   # the overlay and its colorbar, a paper's width
    p = save_figure(ax, tmp_path/'fig.png')
    w, h = Image.open(p).size
    assert w > 1500                                                            # 300 dpi
    plt.close('all')
