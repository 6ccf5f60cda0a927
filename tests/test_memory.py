"Memory bounds of `fastcam run` (issue 14 item 6): maps boxed and drawn at most `map_side` pixels on the long side, boxes still in original pixels."
import numpy as np, pandas as pd, pytest, torch
from pathlib import Path
from PIL import Image
from torch import nn
from fastai.vision.all import DataBlock, CategoryBlock, ColReader, ColSplitter, Resize, Learner
import fastcam.cli as fc
from fastcam.items import DicomBlock
from fastcam.synth import make_png_set

def test_run_maps_are_bounded_and_boxes_match_full_size(tmp_path, monkeypatch):
    df = make_png_set(tmp_path, n=4, seed=2, size=(300, 420))
    db = DataBlock(blocks=(DicomBlock(), CategoryBlock), get_x=ColReader('file', pref=tmp_path), get_y=ColReader('label'),
                   splitter=ColSplitter('is_valid'), item_tfms=Resize(64, method='squish'))
    torch.manual_seed(0)
    learn = Learner(db.dataloaders(df, bs=2, num_workers=0, device='cpu'), nn.Sequential(fc.tiny_xresnet(n_out=2)))
    files = [tmp_path/f for f in df.file]
    cfg = dict(layer=None, target=None, method='gradcam', bs=4, mode='threshold', threshold=0.5, min_area=16, topk=3, save_maps=False, tta=False)
    monkeypatch.setattr(fc, 'map_side', 105)                      # about a quarter of the long side
    jobs = fc._explain_batch(learn, [fc._read(f, True) for f in files], cfg)
    res = learn.cam(files)
    full = res.boxes(mode='threshold', threshold=0.5, min_area=16, topk=3)          # boxed on full-size maps, independently of run
    for i, j in enumerate(jobs):
        W, H = Image.open(files[i]).size
        L = max(H, W)
        assert L > 200 and tuple(j.map.shape) == (round(H*105/L), round(W*105/L))   # scaled to 105 on the long side
        got = sorted((b['x0'], b['y0'], b['x1'], b['y1']) for b in j.rec['boxes'])
        want = sorted(map(tuple, full[full['item'] == i][['x0', 'y0', 'x1', 'y1']].to_numpy().tolist()))
        assert len(got) == len(want), (got, want)
        for g, w in zip(got, want):
            assert all(abs(a - b) <= 5 for a, b in zip(g, w)), (g, w)   # about 4 original pixels per map pixel, plus rounding
            assert 0 <= g[0] < g[2] <= W and 0 <= g[1] < g[3] <= H

def test_overlay_of_a_large_image_is_drawn_from_its_small_copy(tmp_path):
    img = np.zeros((3000, 2000), np.uint8); img[1000:2000, 500:1500] = 200
    m = torch.zeros(750, 500); m[250:500, 125:375] = 1                 # a work-size map of the bright square
    box = dict(x0=500, y0=1000, x1=1500, y1=2000, label='a', score=0.9, prob=0.9)
    small, sm, boxes, truth = fc._shrink(img, m, [box], np.array([[500, 1000, 1500, 2000]]), 600)
    assert small.shape == (600, 400) and tuple(sm.shape) == (600, 400) and truth[0]['x0'] == 100
    assert (boxes[0]['x0'], boxes[0]['y0'], boxes[0]['x1'], boxes[0]['y1']) == (100, 200, 300, 400) and boxes[0]['label'] == 'a'
    assert small[300, 200] == 200 and small[50, 50] == 0 and sm[300, 200] == 1 and sm[50, 50] == 0
    p = fc._overlay(img, m, 'a 0.90', [box], tmp_path, tmp_path/'big.png', ['a'])
    assert Image.open(tmp_path/'overlays'/Path(p).name if not Path(p).is_absolute() else p).size[1] >= 1024 - 1
