"Model-confirmed boxes on a hand-built model whose answer is known: its class-1 logit is the mean brightness of one fixed square, so that square is the whole evidence and a second, equally bright square (a distractor the map lights up just as much) is none."
import numpy as np, pandas as pd, pytest, torch
from torch import nn
from fastcam.core import cam
from fastcam.boxes import cam_boxes
from fastcam.metrics import box_iou
from fastcam.confirm import region_evidence, inpaint

SQUARE, DISTRACTOR = (40, 8, 56, 24), (8, 36, 24, 52)      # (x0, y0, x1, y1) in the 64x64 input

class SquareModel(nn.Module):
    "logits (0, 8*(mean of the square - 0.5)): a 1x1 conv (the explained layer) then the square's mean"
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)
        with torch.no_grad(): self.conv.weight.fill_(1.); self.conv.bias.zero_()
    def forward(self, x):
        x0, y0, x1, y1 = SQUARE
        s = self.conv(x)[:, 0, y0:y1, x0:x1].mean((1, 2))
        return torch.stack([torch.zeros_like(s), 8*(s-0.5)], 1)

def _images(levels, seed=0):
    g = torch.Generator().manual_seed(seed)
    xb = 0.1 + 0.02*torch.rand(len(levels), 1, 64, 64, generator=g)
    for i, v in enumerate(levels):
        for x0, y0, x1, y1 in (SQUARE, DISTRACTOR): xb[i, 0, y0:y1, x0:x1] = v
    return xb

@pytest.fixture
def setup():
    model, xb = SquareModel(), _images([1.0, 0.9, 0.8])
    return model, xb, cam(model, xb, layer='conv', target=1)

def test_the_map_alone_cannot_tell_the_squares_apart(setup):
    model, xb, res = setup
    plain = cam_boxes(res, (64, 64), None, topk=2, min_prob=0.)
    for _, g in plain.groupby('item'):
        assert sorted(map(tuple, g[['x0', 'y0', 'x1', 'y1']].astype(int).values.tolist())) == sorted([SQUARE, DISTRACTOR])
        assert g.score.iloc[0] == pytest.approx(g.score.iloc[1], rel=1e-3)      # same mass share: a tie

def test_confirmed_box_is_the_square_and_the_distractor_scores_lower(setup):
    model, xb, res = setup
    df = cam_boxes(res, (64, 64), None, topk=2, min_prob=0., confirm=True, xb=xb)
    truth = torch.tensor([SQUARE], dtype=torch.float32)
    for i, g in df.groupby('item'):
        first = torch.tensor(g[['x0', 'y0', 'x1', 'y1']].astype(float).values[:1], dtype=torch.float32)
        assert box_iou(first, truth).item() >= 0.9, g
        others = g.iloc[1:]
        assert (others.score < 0.1*g.score.iloc[0]).all() if len(others) else True
    # the evidence of each square, asked of the model directly
    ev = region_evidence(model, xb, [(0, 1, np.array([SQUARE, DISTRACTOR]))])[0]
    assert ev['evidence'][0] > 0.9 and ev['evidence'][1] < 0.05 and ev['drop'][0] > 0.9 and ev['keep'][0] > 0.9
    s = df.groupby('item').score.first().values                              # brighter square: more probability, higher score
    assert len(set(np.round(s, 6))) == 3 and (np.diff(s) < 0).all()
    # the square is necessary and sufficient (evidence 1), so its score is the probability, sigmoid(8*(level - 0.5)) by hand
    np.testing.assert_allclose(s, torch.sigmoid(8*(torch.tensor([1.0, 0.9, 0.8])-0.5)).numpy(), rtol=1e-3)

def test_confirm_leaves_the_model_as_it_was(setup):
    model, xb, res = setup
    model.train(); model.conv.weight.requires_grad_(True)
    cam_boxes(res, (64, 64), None, min_prob=0., confirm=True, xb=xb)
    assert model.training and model.conv.training and model.conv.weight.requires_grad and model.conv.weight.grad is None
    assert torch.is_grad_enabled()
    with pytest.raises(ValueError, match='xb='): cam_boxes(res, (64, 64), None, confirm=True)

def test_inpainting_removes_the_square_without_edges():
    xb = _images([1.0])
    m = torch.zeros(1, 1, 64, 64); x0, y0, x1, y1 = SQUARE; m[..., y0-1:y1+1, x0-1:x1+1] = 1
    f = inpaint(xb, m, 4.)
    assert f[0, 0, y0:y1, x0:x1].max() < 0.15 and (f[0, 0, y0:y1, x0:x1] - 0.11).abs().max() < 0.05   # the background, not a flat 0
